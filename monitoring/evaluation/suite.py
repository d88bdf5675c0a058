"""Which labelled examples an alias is evaluated on: its golden set and its version's test split.

The golden set is `<alias>.jsonl` under TUNELOOP_EVAL_GOLDEN_DIR (or a file given by hand), read with
the training data reader, so a bad line is reported with its line number like training data is.
Published artifacts hold weights and configs only (no JSONL), so the *test split* is rebuilt from
the job spec that trained the version (`last_spec`: the job's record, with the submitter's paths,
else the spec in the version's lineage): splitting is deterministic and seeded, and the
rebuilt split counts only when its data hash equals the version's, i.e. it is exactly the split the
job held out. Where the data files are not reachable from here, that suite is skipped (logged).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.platform import settings
from tuneloop.platform.data.formats import Example, read_examples
from tuneloop.platform.errors import ConfigError, NotFoundError, TuneloopError
from tuneloop.platform.registry import Registry

if TYPE_CHECKING:
    from tuneloop.platform.spec import JobSpec

log = logging.getLogger(__name__)

GOLDEN = "golden"
TEST_SPLIT = "test_split"
FEEDBACK = "feedback"  # labels given since a drift's onset: the gate's new ground truth
UNCHANGED = "unchanged"  # held-out questions whose answer did not change: the gate's regression check


@dataclass(frozen=True)
class Suite:
    """A named set of labelled examples; `source` says where they came from (for events and logs)."""

    name: str
    examples: tuple[Example, ...]
    source: str


def golden_path(alias: str) -> Path:
    return settings.TUNELOOP_EVAL_GOLDEN_DIR.get() / f"{alias}.jsonl"


def golden_suite(alias: str, path: Path | None = None) -> Suite | None:
    """The alias's golden set; None when no file is configured for it. A given `path` must exist."""
    chosen = path or golden_path(alias)
    if path is None and not chosen.is_file():
        return None
    return Suite(GOLDEN, tuple(read_examples(chosen)), str(chosen))


def last_spec(registry: Registry, ref: str) -> JobSpec:
    """The job spec that trained `ref`: the job's own record (the submitter's paths) where there is
    one, else the spec in the version's lineage. An imported version has neither: a ConfigError."""
    from tuneloop.platform.spec import parse_spec

    version = registry.get_version(ref)
    candidates: list[Any] = []
    if version.job_id:
        with contextlib.suppress(NotFoundError):
            candidates.append(registry.get_job(version.job_id).spec)
    candidates.append(version.manifest.get("spec"))
    records = [raw for raw in candidates if isinstance(raw, dict) and raw]
    if not records:
        raise ConfigError(f"{ref} has no recorded job spec (imported?): there is nothing to retrain it from")
    for raw in records[:-1]:
        try:
            return parse_spec(raw, source=f"job spec of {ref}")
        except ConfigError:  # a record written before job rows kept only what the spec set
            log.info("the job record of %s does not validate; using the spec in its lineage", ref)
    return parse_spec(records[-1], source=f"job spec of {ref}")


def test_split_suite(registry: Registry, ref: str) -> Suite | None:
    """The held-out test split of the job that trained `ref`, rebuilt from its lineage; None if it
    cannot be rebuilt exactly (no recorded spec, data not reachable here, or other data now)."""
    from tuneloop.platform.data.splits import data_hash, make_splits

    version = registry.get_version(ref)
    try:
        spec = last_spec(registry, ref)
        splits = make_splits(spec.data, spec.task)
    except TuneloopError as exc:
        log.info("cannot rebuild the test split of %s here: %s", version.ref, str(exc).splitlines()[0])
        return None
    if version.data_hash and data_hash(splits) != version.data_hash:
        log.warning("the data of %s changed since it was trained: no test-split suite", version.ref)
        return None
    return Suite(TEST_SPLIT, tuple(splits.test), f"test split of {version.job_id or version.ref}")


def suites_for(registry: Registry, alias: str, golden: Path | None = None) -> list[Suite]:
    """Every suite that applies to `alias` now: golden set first, then its live version's test split."""
    suites = [s for s in (golden_suite(alias, golden),) if s is not None]
    if golden is None:
        ref = registry.aliases().get(alias)
        split = test_split_suite(registry, ref) if ref else None
        if split is not None:
            suites.append(split)
    return suites
