"""Which Ray cluster `tuneloop train` runs on, in this order:

1. the cluster in RAY_ADDRESS: Ray sets it (to the GCS address) for every job driver, so
   `ray job submit ... -- tuneloop train job.yaml` joins the cluster it was submitted to; a GCS
   address set by hand (`127.0.0.1:6379`) works the same. A dashboard URL there (what
   `eval "$(tuneloop ray env)"` exports for Ray's `job` CLI) is accepted for the embedded head only;
2. the embedded head of `tuneloop ray up`, when it runs (found through TUNELOOP_RAY_DIR);
3. otherwise a private Ray for the duration of the command: loopback only, token auth with a fresh
   token, a temp dir of its own under /tmp, the dashboard on a free port, stopped at the end.

Never Ray's `auto` discovery: on a shared machine it joins whichever Ray it finds first.

Every actor of the job is given the cluster's address in its environment (RAY_ADDRESS, or
RAY_API_SERVER_ADDRESS for the private cluster). Ray Train's placement-group cleaner queries Ray's
state API from inside an actor; with no address there it falls back to auto-discovery, which fails
as soon as two Ray instances run on the machine, and the placement groups of runs that were killed
(trials ASHA stops) then leak until later trials wait forever for CPUs (ENVIRONMENT.md).

Ray caches its token-auth mode when it is first imported, so the variables a cluster needs are in
this process's environment before it imports Ray (`tuneloop train` imports it no earlier).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tuneloop.platform import settings
from tuneloop.platform.errors import ConfigError
from tuneloop.platform.settings import LOOPBACK


@contextmanager
def ray_cluster(echo: Callable[[str], None] = print) -> Iterator[str]:
    """Connect this process to Ray for the duration; yields a description of the cluster used.

    A process that is already connected (a test, a notebook) is used as it is and left connected.
    """
    from tuneloop.platform.ray.cluster import client_env
    from tuneloop.platform.ray.head import running_info

    already = sys.modules.get("ray")
    if already is not None and already.is_initialized():
        yield "the Ray cluster this process is connected to"
        return
    problems = address_problems()
    if problems:
        raise ConfigError(problems[0])
    address = settings.RAY_ADDRESS.get()
    embedded = running_info()
    if address and not _is_url(address):
        with _joined(address, {}) as description:
            echo(f"joined {description}")
            yield description
    elif embedded is not None:
        with _joined(embedded.gcs_address, client_env(Path(embedded.token_path))) as description:
            echo(f"joined {description} (the embedded head of `tuneloop ray up`)")
            yield description
    else:
        with _private_cluster() as description:
            echo(f"started {description}")
            yield description


def address_problems() -> list[str]:
    """Why RAY_ADDRESS cannot be joined from here, if it cannot (checked before a job starts)."""
    from tuneloop.platform.ray.head import running_info

    address = settings.RAY_ADDRESS.get()
    if not _is_url(address):
        return []
    embedded = running_info()
    if embedded is not None and embedded.address.rstrip("/") == address.rstrip("/"):
        return []
    return [
        f"RAY_ADDRESS={address} is a dashboard (Jobs API) URL, which only `ray job submit` uses: submit "
        "the job (`tuneloop jobs submit job.yaml`), or set RAY_ADDRESS to the cluster's GCS address "
        "(HOST:PORT) to run the driver here"
    ]


def _is_url(address: str) -> bool:
    return address.startswith(("http://", "https://"))


@contextmanager
def _joined(address: str, env: Mapping[str, str]) -> Iterator[str]:
    """A running cluster at GCS `address`, joined with `env` (its client variables) in place."""
    with settings.exported_env(env):
        import ray

        # A job may already pass RAY_ADDRESS to its actors; Ray refuses two values of one variable.
        given = settings.ray_job_env_vars()
        env_vars = {} if "RAY_ADDRESS" in given else {"RAY_ADDRESS": address}
        runtime_env = {"env_vars": env_vars} if env_vars else None
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        try:
            yield f"the Ray cluster at {address}"
        finally:
            ray.shutdown()


@contextmanager
def _private_cluster() -> Iterator[str]:
    """A local Ray started by `ray.init`, loopback-only with token auth, removed on exit."""
    from tuneloop.platform.procs import free_port
    from tuneloop.platform.ray.cluster import write_token

    # Short and private: Ray's unix socket paths live under it and must stay under ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="tl-train-", dir="/tmp"))
    token_path = root / "auth_token"
    write_token(token_path)
    port = free_port()
    try:
        with settings.exported_env({**settings.ray_env(), "RAY_AUTH_TOKEN_PATH": str(token_path)}):
            import ray

            ray.init(
                include_dashboard=True,
                dashboard_host=LOOPBACK,
                dashboard_port=port,
                _temp_dir=str(root / "t"),
                runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://{LOOPBACK}:{port}"}},
                log_to_driver=True,
            )
            try:
                yield f"a private local Ray (dashboard http://{LOOPBACK}:{port}, temp dir {root})"
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
