"""A Ray Jobs API client that speaks tuneloop's errors: `JobSubmissionClient` with the token attached.

Ray's SDK reports an unreachable cluster, a refused token and an unknown job id as ConnectionError,
AuthenticationError and RuntimeError("... status code 404 ..."), with multi-line messages. A user of
`tuneloop jobs` gets one line that names the address, the token file or the id and says what to do,
so every SDK call here runs inside `_ray_errors`.

The token is sent explicitly (`Authorization: Bearer`, read from RAY_AUTH_TOKEN_PATH, by default the
embedded head's token), so `tuneloop jobs` works without `eval "$(tuneloop ray env)"` and never picks
up a stray ~/.ray/auth_token.

Ray's SDK sends its requests without a timeout, so a head that accepts connections but never answers
would hang the caller for ever (the monitoring scheduler's thread included). Every request here has
one (TUNELOOP_RAY_TIMEOUT_S): past it, the call fails with RayUnreachableError.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.platform import settings
from tuneloop.platform.errors import NotFoundError, TuneloopError
from tuneloop.platform.output import shortened

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


class RayUnreachableError(TuneloopError):
    """Nothing answers at the Ray Jobs API address."""


class RayAuthError(TuneloopError):
    """The token file is missing, or the cluster refused its token."""


class JobNotFoundError(NotFoundError):
    """The cluster has no job with that submission id."""


def _timed_client(address: str, headers: dict[str, str], timeout: float) -> JobSubmissionClient:
    """Ray's `JobSubmissionClient`, with `timeout` on every HTTP request it makes (its constructor's
    version check included). The SDK passes extra keyword arguments of `_do_request` on to
    `requests.request`, but none of its public methods takes a timeout, so the one place every request
    goes through sets it."""
    from ray.job_submission import JobSubmissionClient

    class TimedJobSubmissionClient(JobSubmissionClient):
        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", timeout)
            return super()._do_request(method, endpoint, **kwargs)

    return TimedJobSubmissionClient(address, headers=headers)


def _one_line(text: str, limit: int = 300) -> str:
    return shortened(" ".join(text.split()), limit)


class JobsClient:
    """The Jobs API of one Ray cluster (default: TUNELOOP_RAY_ADDRESS with RAY_AUTH_TOKEN_PATH)."""

    def __init__(
        self, address: str | None = None, token_path: Path | None = None, *, timeout: float | None = None
    ) -> None:
        """`timeout`: seconds any one request may take (default: TUNELOOP_RAY_TIMEOUT_S)."""
        self.address = (address or settings.TUNELOOP_RAY_ADDRESS.get()).rstrip("/")
        self.token_path = token_path or settings.RAY_AUTH_TOKEN_PATH.get()
        try:
            token = self.token_path.read_text().strip()
        except OSError:
            token = ""
        if not token:
            raise RayAuthError(
                f"no Ray auth token in {self.token_path}: start the embedded head with `tuneloop ray up`, "
                "or set RAY_AUTH_TOKEN_PATH to your cluster's token file"
            )
        self.timeout = settings.TUNELOOP_RAY_TIMEOUT_S.get() if timeout is None else timeout
        with self._ray_errors():
            self._client: JobSubmissionClient = _timed_client(
                self.address, {"Authorization": f"Bearer {token}"}, self.timeout
            )

    # -- calls
    def submit(
        self,
        entrypoint: str,
        *,
        submission_id: str | None = None,
        working_dir: Path | None = None,
        env_vars: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Submit `entrypoint` (a shell command run by the job driver); return the submission id."""
        runtime_env: dict[str, Any] = {}
        if working_dir is not None:
            runtime_env["working_dir"] = str(working_dir)
        if env_vars:
            runtime_env["env_vars"] = dict(env_vars)
        with self._ray_errors():
            return str(
                self._client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=submission_id,
                    runtime_env=runtime_env or None,
                    metadata=metadata,
                )
            )

    def info(self, job_id: str) -> JobDetails:
        with self._ray_errors(job_id):
            return self._client.get_job_info(job_id)

    def status(self, job_id: str) -> str:
        with self._ray_errors(job_id):
            return str(self._client.get_job_status(job_id).value)

    def logs(self, job_id: str) -> str:
        with self._ray_errors(job_id):
            return str(self._client.get_job_logs(job_id))

    def follow(self, job_id: str, write: Callable[[str], object]) -> None:
        """Pass the job's log to `write` as it is produced, until the job ends."""
        self.status(job_id)  # an unknown id fails here with a clear message, not in the websocket

        async def tail() -> None:
            async for chunk in self._client.tail_job_logs(job_id):
                write(chunk)

        with self._ray_errors(job_id):
            asyncio.run(tail())

    def stop(self, job_id: str) -> bool:
        """Ask Ray to stop the job; False if it had already ended."""
        with self._ray_errors(job_id):
            return bool(self._client.stop_job(job_id))

    def list(self) -> list[JobDetails]:
        with self._ray_errors():
            return list(self._client.list_jobs())

    def wait(self, job_id: str, timeout: float | None = None, interval: float = 1.0) -> str:
        """Poll until the job ends; return its final status (or the current one at `timeout`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (status := self.status(job_id)) not in TERMINAL:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(interval)
        return status

    # -- errors
    @contextmanager
    def _ray_errors(self, job_id: str | None = None) -> Iterator[None]:
        """Turn the SDK's exceptions into one-line TuneloopErrors that say what to do."""
        import aiohttp
        import requests

        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError:
            raise RayAuthError(
                f"the Ray cluster at {self.address} refused the token in {self.token_path}: use the "
                "cluster's token (for the embedded head: `tuneloop ray env`)"
            ) from None
        except (requests.Timeout, TimeoutError) as exc:
            raise RayUnreachableError(
                f"the Ray Jobs API at {self.address} did not answer within {self.timeout:g} s "
                f"({type(exc).__name__}): is the head overloaded or stuck? (TUNELOOP_RAY_TIMEOUT_S)"
            ) from None
        except (ConnectionError, requests.ConnectionError, aiohttp.ClientConnectionError) as exc:
            raise RayUnreachableError(
                f"cannot reach the Ray Jobs API at {self.address} ({_one_line(str(exc), 120)}): "
                "start the embedded head with `tuneloop ray up`, or set TUNELOOP_RAY_ADDRESS "
                "(see `tuneloop ray status`)"
            ) from None
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 404 and job_id is not None:
                raise self._not_found(job_id) from None
            raise TuneloopError(f"Ray Jobs API at {self.address}: {_one_line(str(exc))}") from None
        except RuntimeError as exc:
            text = str(exc)
            if job_id is not None and "status code 404" in text:
                raise self._not_found(job_id) from None
            raise TuneloopError(f"Ray Jobs API at {self.address}: {_one_line(text)}") from None

    def _not_found(self, job_id: str) -> JobNotFoundError:
        return JobNotFoundError(
            f"no Ray job {job_id!r} at {self.address}; `tuneloop jobs list` shows the submission ids"
        )
