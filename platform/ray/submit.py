"""`tuneloop jobs ...`: submit a job spec as a Ray job running `tuneloop train`, and follow it.

`submit_spec` is the platform's fine-tuning entry point (the control API and the drift policy call it
too). It validates the spec and its data locally first, so a bad spec fails before anything reaches
the cluster; stages a working dir holding only the spec and its data files (never the whole folder
the spec sits in); records the job in the registry; and submits `tuneloop train <spec>` through the
Jobs API. The job driver's environment comes from the raylet, not from the submitter, so the registry,
artifact and model locations travel in the runtime env: the driver writes the same registry that
`tuneloop adapters list` reads here. A registry password never does (`registry_env`): the runtime env
is readable through the Jobs API and the dashboard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tuneloop.platform import settings
from tuneloop.platform.errors import ConfigError, NotFoundError, TuneloopError
from tuneloop.platform.hub import DATASET_PREFIX
from tuneloop.platform.output import shortened
from tuneloop.platform.private_files import write_private_file
from tuneloop.platform.ray.client import TERMINAL, JobsClient

if TYPE_CHECKING:
    from ray.job_submission import JobDetails
    from tuneloop.platform.spec import JobSpec

log = logging.getLogger(__name__)
DATA_KEYS = ("train", "validation", "test")
# Ray job metadata keys (string values only): tell tuneloop's jobs from others on a shared cluster.
META_ADAPTER = "tuneloop_adapter"
META_SPEC = "tuneloop_spec"
META_SOURCES = "tuneloop_sources"  # JSON: staged data path -> the submitter's file
# A data file inside Ray's unpacked working dir: ".../working_dir_files/_ray_pkg_<hash>/data/test/x.jsonl".
STAGED_PATH = re.compile(r"[^\s'\"]*_ray_pkg_[0-9a-f]+/(data/(?:train|validation|test)/[^\s:'\"]+)")
REGISTRY_URL_FILE = "registry-url-{digest}"
"""Under TUNELOOP_HOME/secrets: the registry URL jobs on this machine read (registry_env), one file per
URL (named by a digest of it), so a later submission to another registry never changes the file a
running job reads."""


def load_and_check(spec_path: Path) -> JobSpec:
    """Validate the spec, then every data file it names that exists here, reporting every bad line;
    where all of them are here, split them as the job will, so a leak between the given splits or
    too few examples after carving fails here too, before anything reaches the cluster."""
    from tuneloop.platform.data.formats import read_examples
    from tuneloop.platform.data.splits import make_splits
    from tuneloop.platform.spec import load_spec

    spec = load_spec(spec_path)
    local: dict[str, Path] = {}
    for key in DATA_KEYS:
        path = getattr(spec.data, key)
        if path is None:
            continue
        if not path.exists() and not _was_relative(spec_path, key):
            log.warning("data.%s %s is not on this machine; it must exist where the job runs", key, path)
            continue
        local[key] = path
    if len(local) == sum(getattr(spec.data, key) is not None for key in DATA_KEYS):
        make_splits(spec.data, spec.task)  # reads and checks every file, then splits as the job will
        return spec
    for key, path in local.items():
        least = spec.data.min_examples if key == "train" else 1
        read_examples(path, task=spec.task, min_examples=least, columns=spec.data.columns)
    return spec


def staged_sources(spec_path: Path) -> dict[str, str]:
    """Where each data file of the spec lands in the staged working dir (`data/<key>/<name>`), mapped
    to the file as the user named it (the spec's path, seen from where the spec was given: `data/x.jsonl`
    for a spec `job.yaml` in the current folder), so messages from the cluster name the user's files."""
    data = _raw(spec_path).get("data")
    found: dict[str, str] = {}
    for key in DATA_KEYS:
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, str):
            written = Path(value).expanduser()
            if value.startswith(DATASET_PREFIX):
                source = value  # a hub dataset file: named as written, it has no path of the user's
            elif written.is_absolute():
                source = str(written)
            else:
                source = os.path.normpath(spec_path.parent / written)
            found[f"data/{key}/{written.name}"] = source
    return found


def unstage(text: str, sources: dict[str, str]) -> str:
    """`text` with every staged data path inside Ray's working dir replaced by the user's file."""
    return STAGED_PATH.sub(lambda m: sources.get(m.group(1), m.group(1)), text)


def job_sources(info: JobDetails) -> dict[str, str]:
    """The staged -> user file map a tuneloop job carries in its metadata ({} for other jobs)."""
    try:
        found = json.loads((info.metadata or {}).get(META_SOURCES, "{}"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _was_relative(spec_path: Path, key: str) -> bool:
    data = _raw(spec_path).get("data") or {}
    value = data.get(key) if isinstance(data, dict) else None
    return isinstance(value, str) and not Path(value).expanduser().is_absolute()


def _raw(spec_path: Path) -> dict[str, Any]:
    raw = yaml.safe_load(spec_path.read_text())
    return raw if isinstance(raw, dict) else {}


@contextmanager
def staged_working_dir(spec_path: Path) -> Iterator[tuple[Path, str]]:
    """A temporary Ray working dir with the spec and copies of its data files; yields (dir, spec name).

    Data paths are rewritten to `data/<key>/<file name>` inside it. An absolute data path that does
    not exist here is kept as it is (a file on the cluster). A base model given as a local folder
    becomes an absolute path: models are never uploaded, and the driver runs in the working dir.
    """
    from tuneloop.platform.spec import data_path

    raw = _raw(spec_path)
    data = raw.get("data")
    if not isinstance(data, dict):
        data = {}
    base = raw.get("base_model")
    if isinstance(base, str) and not Path(base).expanduser().is_absolute() and Path(base).is_dir():
        raw["base_model"] = str(Path(base).resolve())
    with tempfile.TemporaryDirectory(prefix="tuneloop-job-") as tmp:
        root = Path(tmp)
        for key in DATA_KEYS:
            value = data.get(key)
            if not isinstance(value, str):
                continue
            source = data_path(value, spec_path.parent)
            if source.is_file() or source.is_dir():  # a `datasets` folder travels whole
                dest = root / "data" / key / source.name
                dest.parent.mkdir(parents=True)
                if source.is_dir():
                    shutil.copytree(source, dest)
                else:
                    shutil.copyfile(source, dest)
                data[key] = dest.relative_to(root).as_posix()
            elif not Path(value).expanduser().is_absolute():
                raise ConfigError(f"{spec_path}: data.{key} file {source} does not exist")
        name = spec_path.name
        header = f"# Staged by `tuneloop jobs submit` from {spec_path.resolve()}\n"
        (root / name).write_text(header + yaml.safe_dump(raw, sort_keys=False))
        yield root, name


def job_env() -> dict[str, str]:
    """What the driver must share with the submitter: where the registry, artifacts and models are.

    The registry job id needs no variable: it is the submission id, which Ray gives the driver. The
    registry URL goes as `registry_env` says, never with its password.
    """
    return {
        "TUNELOOP_HOME": str(settings.TUNELOOP_HOME.get()),
        **registry_env(),
        "TUNELOOP_ARTIFACTS": settings.TUNELOOP_ARTIFACTS.get(),
        "TUNELOOP_MODELS_DIR": str(settings.TUNELOOP_MODELS_DIR.get()),
        **settings.hub_env(),
    }


def registry_env() -> dict[str, str]:
    """The variables a job driver (or a Ray head's drivers) find the registry by.

    A Ray job's runtime env can be read back by anyone with the Jobs API or the dashboard, so a URL
    with a password never goes into it. With TUNELOOP_JOB_REGISTRY_CREDENTIALS=cluster nothing goes
    (the cluster's pods have TUNELOOP_DB_URL from a Secret, as the Helm chart's do). Otherwise a URL
    without a password goes as it is, and one with a password is written to a private file (mode
    0600) under TUNELOOP_HOME/secrets and only its path goes, with TUNELOOP_DB_URL emptied so a URL
    in the head's own environment cannot win over it.
    """
    url = settings.TUNELOOP_DB_URL.get()
    if settings.TUNELOOP_JOB_REGISTRY_CREDENTIALS.get() == "cluster":
        return {}
    if settings.redact_url(url) == url:
        return {"TUNELOOP_DB_URL": url}
    name = REGISTRY_URL_FILE.format(digest=hashlib.sha256(url.encode()).hexdigest()[:16])
    path = write_private_file(settings.TUNELOOP_HOME.get() / "secrets" / name, url)
    return {"TUNELOOP_DB_URL": "", "TUNELOOP_DB_URL_FILE": str(path)}


def new_job_id(adapter: str) -> str:
    """A readable, unique submission id: tuneloop-<adapter>-<local time>-<random>."""
    return f"tuneloop-{adapter}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def submit_spec(spec_path: Path, *, address: str | None = None, job_id: str | None = None) -> str:
    """Validate, record and submit a job spec as a Ray job running `tuneloop train`; return its id
    (`job_id` when given: the monitoring loop records it before submitting)."""
    from tuneloop.platform.registry import Registry
    from tuneloop.platform.registry.tables import JobStatus

    spec = load_and_check(spec_path)
    client = JobsClient(address)  # an unreachable cluster or a missing token fails before any record
    job_id = job_id or new_job_id(spec.output.adapter)
    with staged_working_dir(spec_path) as (workdir, name):
        registry = Registry()
        # Recorded before submitting: the driver may report to this row as soon as it starts.
        # Only what the spec set, as the driver records it: it must validate again (retrains read it).
        registry.add_job(job_id, spec.output.adapter, spec.model_dump(mode="json", exclude_unset=True))
        try:
            client.submit(
                f"tuneloop train {shlex.quote(name)}",
                submission_id=job_id,
                working_dir=workdir,
                env_vars=job_env(),
                metadata={
                    META_ADAPTER: spec.output.adapter,
                    META_SPEC: str(spec_path.resolve()),
                    META_SOURCES: json.dumps(staged_sources(spec_path)),
                },
            )
        except Exception as exc:
            failure = settings.redact_url(f"submission failed: {exc}")
            registry.finish_job(job_id, JobStatus.FAILED, {"error": failure})
            raise
    return job_id


def record_outcome(client: JobsClient, job_id: str) -> JobDetails:
    """The job's Ray details; a finished tuneloop job still open in the registry is closed with them.

    The driver normally records its own result; this catches drivers that died without doing so
    (killed, stopped, out of memory). Best effort: a registry it cannot reach is only logged.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from tuneloop.platform.registry import Registry
    from tuneloop.platform.registry.tables import JobStatus

    info = client.info(job_id)
    status = str(info.status.value)
    if status not in TERMINAL or not (info.metadata or {}).get(META_ADAPTER):
        return info
    try:
        registry = Registry()
        job = registry.get_job(job_id)
        if job.status in (JobStatus.PENDING, JobStatus.RUNNING):
            result = {"ray_status": status, "message": info.message or ""}
            registry.finish_job(job_id, JobStatus(status.lower()), result)
    except NotFoundError:
        pass  # submitted by someone else's registry, or by plain `ray job submit`
    except (SQLAlchemyError, TuneloopError) as exc:
        log.warning("could not record the end of job %s in the registry: %s", job_id, exc)
    return info


# -- `tuneloop jobs ...` commands


def jobs_submit(spec: Path, wait: bool = False, follow: bool = False, address: str | None = None) -> int:
    """Submit a job spec as a Ray job that runs `tuneloop train`; print its submission id.

    The spec and its data are validated here first; a bad spec fails before submission.

    Args:
        spec: The job's YAML file (see examples/).
        wait: Wait until the job ends; exit non-zero unless it succeeded.
        follow: Print the job's log as it runs (implies --wait).
        address: Ray dashboard / Jobs API URL (default: TUNELOOP_RAY_ADDRESS).
    """
    job_id = submit_spec(spec, address=address)
    print(job_id, flush=True)
    if not (wait or follow):
        return 0
    return _finish(JobsClient(address), job_id, follow)


def jobs_status(job_id: str, address: str | None = None, json: bool = False) -> int:
    """Print a job's status and Ray's message about it.

    Args:
        job_id: Submission id (`tuneloop jobs list` shows them).
        address: Ray dashboard / Jobs API URL (default: TUNELOOP_RAY_ADDRESS).
        json: Print a JSON object (id, status, message, adapter, entrypoint, times) instead.
    """
    from tuneloop.platform.output import print_json

    info = record_outcome(JobsClient(address), job_id)
    if json:
        print_json(_job_row(info))
    else:
        _print_status(info)
    return 0


def jobs_logs(job_id: str, follow: bool = False, address: str | None = None) -> int:
    """Print a job's log (the driver's stdout and stderr).

    Args:
        job_id: Submission id (`tuneloop jobs list` shows them).
        follow: Keep printing as the job writes, until it ends; exit non-zero unless it succeeded.
        address: Ray dashboard / Jobs API URL (default: TUNELOOP_RAY_ADDRESS).
    """
    client = JobsClient(address)
    if follow:
        return _finish(client, job_id, follow=True)
    sys.stdout.write(unstage(client.logs(job_id), job_sources(client.info(job_id))))
    return 0


def jobs_stop(job_id: str, address: str | None = None) -> int:
    """Stop a running job and wait (up to a minute) until Ray reports it stopped.

    Args:
        job_id: Submission id (`tuneloop jobs list` shows them).
        address: Ray dashboard / Jobs API URL (default: TUNELOOP_RAY_ADDRESS).
    """
    client = JobsClient(address)
    if not client.stop(job_id):
        print(f"{job_id} had already ended: {client.status(job_id)}")
        return 0
    status = client.wait(job_id, timeout=60, interval=0.5)
    record_outcome(client, job_id)
    print(f"{job_id} {status}")
    return 0 if status in TERMINAL else 1


def jobs_list(address: str | None = None, json: bool = False) -> int:
    """List the cluster's jobs, newest first, with status and (for tuneloop jobs) adapter.

    Args:
        address: Ray dashboard / Jobs API URL (default: TUNELOOP_RAY_ADDRESS).
        json: Print a JSON list of jobs (as `jobs status --json` shows one) instead of the table.
    """
    from tuneloop.platform.output import print_json

    jobs = [job for job in JobsClient(address).list() if job.submission_id]
    if json:
        print_json([_job_row(job) for job in sorted(jobs, key=lambda j: j.start_time or 0, reverse=True)])
        return 0
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'SUBMISSION ID':<44} {'STATUS':<10} {'STARTED':<19} {'ADAPTER':<20} ENTRYPOINT")
    for job in sorted(jobs, key=lambda j: j.start_time or 0, reverse=True):
        started = datetime.fromtimestamp(job.start_time / 1000) if job.start_time else None
        when = started.strftime("%Y-%m-%d %H:%M:%S") if started else "-"
        adapter = (job.metadata or {}).get(META_ADAPTER, "-")
        entry = shortened(job.entrypoint, 60)
        print(f"{job.submission_id:<44} {job.status.value:<10} {when:<19} {adapter:<20} {entry}")
    return 0


def _job_row(info: JobDetails) -> dict[str, Any]:
    """One job for `--json`: Ray's fields that matter, times in UTC, the user's file names in messages."""

    def when(ms: int | None) -> str | None:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms else None

    return {
        "id": info.submission_id,
        "status": info.status.value,
        "message": unstage((info.message or "").strip(), job_sources(info)),
        "adapter": (info.metadata or {}).get(META_ADAPTER),
        "entrypoint": info.entrypoint,
        "started_at": when(info.start_time),
        "ended_at": when(info.end_time),
    }


def _finish(client: JobsClient, job_id: str, follow: bool) -> int:
    """Wait for the end (printing the log if `follow`), record it, print the final status line."""
    if follow:
        sources = job_sources(client.info(job_id))
        client.follow(job_id, lambda chunk: (sys.stdout.write(unstage(chunk, sources)), sys.stdout.flush()))
    client.wait(job_id)
    info = record_outcome(client, job_id)
    _print_status(info, brief=follow)
    return 0 if info.status.value == "SUCCEEDED" else 1


def _print_status(info: JobDetails, brief: bool = False) -> None:
    """`ID STATUS: message`; `brief` keeps the message's first line (Ray appends the log tail to it)."""
    message = unstage((info.message or "").strip(), job_sources(info))
    if brief:
        message = message.splitlines()[0] if message else ""
    print(f"{info.submission_id} {info.status.value}" + (f": {message}" if message else ""), flush=True)
