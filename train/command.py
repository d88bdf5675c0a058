"""`tuneloop train JOB.yaml`: the whole fine-tuning job, in this process.

Usually this process is a Ray job's driver: `tuneloop jobs submit job.yaml`, or
`ray job submit --address http://127.0.0.1:8265 --working-dir DIR -- tuneloop train job.yaml`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType


def train(job: Path) -> int:
    """Run a fine-tuning job: validate, train on Ray, evaluate on the test split, publish a candidate.

    As a Ray job's driver (`ray job submit ... -- tuneloop train job.yaml`, or `tuneloop jobs submit`)
    it joins that cluster and its registry job id is the Ray submission id. Run directly, it joins
    the cluster named by RAY_ADDRESS, or starts a private local Ray for the duration. A bad spec or
    bad data stops it before anything starts, with one error listing every problem. It ends by
    printing the test metrics (tuned beside base) and the new version, adapter@N (a candidate).

    Args:
        job: The job's YAML file (see examples/).
    """
    from tuneloop.train.driver import run
    from tuneloop.train.evaluate import format_table

    # `ray job stop` (and `tuneloop jobs stop`) send SIGTERM: unwind normally instead, so the registry
    # records the job as stopped and a private Ray started here is shut down and removed.
    signal.signal(signal.SIGTERM, _stop)
    outcome = run(job, echo=lambda line: print(line, flush=True))
    print(f"published {outcome.version} (candidate) at {outcome.uri}")
    print(format_table(outcome.metrics))
    print(outcome.version, flush=True)
    return 0


def _stop(signum: int, frame: FrameType | None) -> None:
    print("tuneloop train: stopping (SIGTERM)", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)
