"""A private PostgreSQL cluster for tests: its own data folder, 127.0.0.1 on a free port, stopped by its PID.

`initdb` refuses to run as root, so under root the cluster belongs to the `postgres` account that
Debian's package creates (or `nobody`), run through `runuser`, in a folder that account owns. The
Unix socket goes inside that folder too (`-k`), never to /var/run/postgresql. Authentication is
`trust` for the superuser `tuneloop`: the server listens on loopback only and lives for one test
session. Each test asks for a database of its own (`create_database`), so tests never see each
other's rows. The binaries come from PATH or Debian's /usr/lib/postgresql/<version>/bin;
`scripts/install-postgres.sh` (run by `make test`) installs them where missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tuneloop.platform.procs import free_port
from tuneloop.platform.settings import LOOPBACK

__all__ = ["PostgresServer", "find_pg_bin", "pid_alive", "start_postgres"]

SUPERUSER = "tuneloop"


def find_pg_bin() -> Path | None:
    """The folder holding `initdb` and `pg_ctl` (PATH first, then Debian's versioned folders)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).resolve().parent == Path(pg_ctl).resolve().parent:
        return Path(initdb).resolve().parent
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


@dataclass
class PostgresServer:
    """A running cluster: `url(db)` is a SQLAlchemy URL for the psycopg (v3) driver."""

    bin_dir: Path
    data_dir: Path
    port: int
    pid: int
    run_as: str | None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{LOOPBACK}:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host=LOOPBACK, port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if user else argv


def _account() -> str | None:
    """Who runs the cluster: ourselves unless we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` account exists for initdb")


def _run(argv: list[str], log: Path, timeout: float) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}\n{result.stdout}\n{tail}"
        )


@contextmanager
def start_postgres(start_timeout: float = 60.0) -> Iterator[PostgresServer]:
    """Initialise and start a cluster in a fresh temporary folder; stop it and delete the folder after."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise RuntimeError(
            "PostgreSQL's initdb/pg_ctl are missing: run scripts/install-postgres.sh (make test does)"
        )
    user = _account()
    # Not pytest's tmp_path: that sits under a root-only folder the cluster's account cannot enter.
    root = Path(tempfile.mkdtemp(prefix="tuneloop-pg-"))
    root.chmod(0o755)
    data_dir, log = root / "data", root / "server.log"
    data_dir.mkdir(mode=0o700)
    if user:
        entry = pwd.getpwnam(user)
        for path in (root, data_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    port = free_port()
    pid = 0
    try:
        _run(
            _as_user(
                user,
                [str(bin_dir / "initdb"), "-D", str(data_dir), "--auth=trust", "-U", SUPERUSER,
                 "-E", "UTF8", "--locale=C", "--no-sync"],
            ),
            log,
            timeout=start_timeout,
        )  # fmt: skip
        # fsync off: a test cluster never needs to survive a power cut, and it saves seconds per test.
        options = f"-k {root} -h {LOOPBACK} -p {port} -c fsync=off -c full_page_writes=off"
        _run(
            _as_user(
                user,
                [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-o", options, "-l", str(log),
                 "-w", "-t", str(int(start_timeout)), "start"],
            ),
            log,
            timeout=start_timeout + 10,
        )  # fmt: skip
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        yield PostgresServer(bin_dir=bin_dir, data_dir=data_dir, port=port, pid=pid, run_as=user)
    finally:
        _stop(bin_dir, data_dir, pid, user)
        shutil.rmtree(root, ignore_errors=True)


def _stop(bin_dir: Path, data_dir: Path, pid: int, user: str | None) -> None:
    """Stop the cluster of `data_dir` (fast shutdown), then make sure its postmaster `pid` is gone."""
    if not (data_dir / "postmaster.pid").exists() and not pid:
        return
    stop = [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "-t", "20", "stop"]
    subprocess.run(
        _as_user(user, stop),
        capture_output=True,
        timeout=40,
        check=False,
    )
    if pid:
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)  # the postmaster we started; its children exit with it


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in {"Z", "X"}
