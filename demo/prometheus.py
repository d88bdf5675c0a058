"""A Prometheus server for the embedded setup: Debian's `prometheus` binary on loopback, scraping
tuneloop's servers with a config written here (the demo starts one when the binary is installed;
the tests use the same to check dashboards and rules against a real server).

The server runs as a `ManagedProcess` (its own process group, stopped by its PID) on a free
127.0.0.1 port, with its data and config under a folder of the caller's. Bearer tokens (the
gateway's admin key) go to files readable by the owner only, never into the config itself.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuneloop.platform.procs import ManagedProcess, free_port
from tuneloop.platform.settings import LOOPBACK


@dataclass(frozen=True)
class ScrapeTarget:
    """One scrape job: a loopback port and path, with an optional bearer token."""

    job: str
    port: int
    path: str = "/metrics"
    bearer: str | None = None


def find_prometheus() -> Path | None:
    """The installed server binary (scripts/install-prometheus.sh puts Debian's in /usr/bin), or None."""
    found = shutil.which("prometheus")
    return Path(found) if found else None


def config(
    targets: Sequence[ScrapeTarget], secrets: Path, *, interval_s: float, rule_files: Sequence[Path] = ()
) -> dict[str, Any]:
    """The server's config: one job per target, scraped every `interval_s`, with `rule_files` loaded."""
    jobs = []
    for target in targets:
        job: dict[str, Any] = {
            "job_name": target.job,
            "metrics_path": target.path,
            "static_configs": [{"targets": [f"{LOOPBACK}:{target.port}"]}],
        }
        if target.bearer is not None:
            key = secrets / f"{target.job}.token"
            key.unlink(missing_ok=True)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
            with os.fdopen(fd, "w") as f:
                f.write(target.bearer)
            job["authorization"] = {"type": "Bearer", "credentials_file": str(key)}
        jobs.append(job)
    interval = f"{interval_s:g}s"
    every = {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval}
    out: dict[str, Any] = {"global": every, "scrape_configs": jobs}
    if rule_files:
        out["rule_files"] = [str(path) for path in rule_files]
    return out


def prometheus_process(
    targets: Sequence[ScrapeTarget],
    workdir: Path,
    *,
    binary: Path,
    interval_s: float = 5.0,
    rule_files: Sequence[Path] = (),
    ready_timeout: float = 60.0,
) -> tuple[ManagedProcess, int]:
    """The server (not started) and its port: config, data and log under `workdir`, an hour's retention."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config(targets, workdir, interval_s=interval_s, rule_files=rule_files)))
    port = free_port()
    process = ManagedProcess(
        [
            str(binary),
            f"--config.file={path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            "--storage.tsdb.retention.time=1h",
            f"--web.listen-address={LOOPBACK}:{port}",
        ],
        log_path=workdir / "prometheus.log",
        health_url=f"http://{LOOPBACK}:{port}/-/ready",
        name="prometheus",
        ready_timeout=ready_timeout,
    )
    return process, port
