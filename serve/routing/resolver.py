"""What a request's `model` means: the base model, an alias, or a pinned version — and may this key use it.

Names, in the order they are tried:
- the base model as the replica was started (`--model`), or its engine-side folder;
- an alias (`support-bot`): the version the follower has *switched* it to, which after a promotion
  is the new version only once that version is loaded;
- a pinned version: `adapter@N`, or `alias@N` meaning version N of the alias's adapter.
Anything else, and anything outside the key's scope, is the same 404. Versions that exist but
cannot be served here get an error that says why and what to do instead. A version the gate has
not passed yet (`candidate`) is served only to admin keys, which is how the gate and evaluations
call it; to every other key it does not exist. A `rejected` version is served to nobody.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tuneloop.monitoring.metrics import BASE_VERSION
from tuneloop.platform.basemodels import same_base_model
from tuneloop.platform.promotion import engine_only_reason, unservable_reason
from tuneloop.platform.refs import VersionRef, adapter_name
from tuneloop.serve.auth.keys import Principal
from tuneloop.serve.errors import OpenAIError, bad_request, engine_unavailable, model_not_found
from tuneloop.serve.request.hooks import prompt_embeds_hook
from tuneloop.serve.routing.snapshot import Snapshot, VersionInfo

Kind = Literal["base", "lora", "prompt_embeddings"]
CANDIDATE, REJECTED = "candidate", "rejected"


def _may_pin(info: VersionInfo, principal: Principal, snapshot: Snapshot) -> bool:
    """Whether `principal` may call `info` by its version name: candidates are for admin keys, and for
    the key that fine-tuned them through the API (its `fine_tuned_model`)."""
    return info.status != CANDIDATE or principal.admin or principal.owns(info.adapter, snapshot)


@dataclass(frozen=True)
class BaseModel:
    """The model this replica's engine serves, under the names clients and adapters use for it."""

    public: str
    """What clients send as `model` (the `--model` argument)."""
    engine: str
    """The engine's own name for it (the local folder vLLM was started with)."""
    version: str | None = None
    """`adapter@N` when the base is a stored full or partial fine-tune."""

    def names(self) -> set[str]:
        return {self.public, self.engine} | ({self.version} if self.version else set())


@dataclass(frozen=True)
class Target:
    """Where one request goes: the engine-side model, and the labels its metrics carry."""

    requested: str
    engine_model: str
    kind: Kind
    alias: str = ""
    version: str = BASE_VERSION
    info: VersionInfo | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One line of /v1/models."""

    id: str
    parent: str | None
    root: str


class Resolver:
    """Resolves names against the follower's snapshot and switched aliases (see the module docstring)."""

    def __init__(self, base: BaseModel, *, prompt_embeds: bool = True) -> None:
        """`prompt_embeds`: whether the engine takes prompt embeddings (prompt-tuned versions)."""
        self.base = base
        self.prompt_embeds = prompt_embeds
        self._same_base: dict[str, bool] = {}

    @property
    def base_version(self) -> str:
        """The version label of the base model: `adapter@N` for a stored fine-tune, else `base`."""
        return self.base.version or BASE_VERSION

    def resolve(self, model: str, principal: Principal, snapshot: Snapshot, live: dict[str, str]) -> Target:
        if model in self.base.names():
            return Target(
                requested=model, engine_model=self.base.engine, kind="base", version=self.base_version
            )
        adapter = snapshot.adapter_of_alias(model)
        if adapter is not None:
            if not principal.may_use(adapter, snapshot):
                raise model_not_found(model)
            ref = live.get(model)
            if ref is None:
                info = snapshot.versions.get(snapshot.aliases[model])
                refusal = self.refusal(info) if info else None
                raise refusal or engine_unavailable(
                    f"`{model}` is being loaded; retry shortly", retry_after=1
                )
            return self._target(model, snapshot.versions.get(ref), alias=model)
        pinned = VersionRef.parse(model)
        if pinned is not None:
            adapter = snapshot.adapter_of_alias(pinned.adapter) or pinned.adapter
            info = snapshot.version(adapter, pinned.number)
            if (
                info is not None
                and principal.may_use(adapter, snapshot)
                and _may_pin(info, principal, snapshot)
            ):
                refusal = self.refusal(info)
                if refusal is not None:
                    raise refusal
                return self._target(model, info, alias="")
        raise model_not_found(model)

    def refusal(self, info: VersionInfo) -> OpenAIError | None:
        """Why this replica cannot serve `info`, as the error a client gets; None if it can."""
        if info.ref == self.base.version:
            return None
        if info.status == REJECTED:
            return bad_request(
                f"{info.ref} was rejected (see `tuneloop adapters history {info.adapter}`) and is not served",
                param="model",
                code="model_not_servable",
            )
        if not self._on_our_base(info.base_model):
            return bad_request(  # the other base is named by its folder: not said here
                f"{info.ref} was trained on another base model than `{self.base.public}`, which this "
                "replica serves; call it on a replica of its own base model",
                param="model",
                code="model_not_servable",
            )
        if info.serving == "none":
            reason = unservable_reason(info.ref, info.method, info.serving) or ""
            return bad_request(reason, param="model", code="model_not_servable")
        if info.serving == "engine":
            return bad_request(
                engine_only_reason(info.ref, info.method), param="model", code="model_not_servable"
            )
        if info.serving == "prompt_embeddings" and not self.prompt_embeds:
            return bad_request(
                f"{info.ref} was trained with {info.method} and is served through prompt embeddings, "
                "which this replica has turned off (TUNELOOP_PROMPT_EMBEDS=0)",
                param="model",
                code="model_not_servable",
            )
        if info.serving == "prompt_embeddings" and prompt_embeds_hook() is None:
            return OpenAIError(
                501,
                f"{info.ref} was trained with {info.method} and is served through prompt embeddings, "
                "which this gateway cannot do: tuneloop.serve.prompt_embeds does not import (see its log)",
                type="server_error",
                param="model",
                code="not_implemented",
            )
        return None

    def visible(self, principal: Principal, snapshot: Snapshot, live: dict[str, str]) -> list[ModelEntry]:
        """The base model, then every alias and version this key may use, each adapter under the base."""
        entries = [ModelEntry(id=self.base.public, parent=None, root=self.base.engine)]
        for alias, ref in sorted(live.items()):
            if principal.may_use(adapter_name(ref), snapshot):
                entries.append(ModelEntry(id=alias, parent=self.base.public, root=ref))
        for ref, info in sorted(snapshot.versions.items()):
            if ref == self.base.version or not principal.may_use(info.adapter, snapshot):
                continue
            if not _may_pin(info, principal, snapshot):
                continue
            if self.refusal(info) is None:
                entries.append(ModelEntry(id=ref, parent=self.base.public, root=ref))
        return entries

    def _target(self, requested: str, info: VersionInfo | None, *, alias: str) -> Target:
        if info is None:  # an alias switched to a version the registry no longer lists
            raise model_not_found(requested)
        if info.ref == self.base.version:
            return Target(
                requested=requested,
                engine_model=self.base.engine,
                kind="base",
                alias=alias,
                version=self.base_version,
            )
        kind: Kind = "prompt_embeddings" if info.serving == "prompt_embeddings" else "lora"
        engine_model = info.ref if kind == "lora" else self.base.engine
        return Target(requested, engine_model, kind, alias=alias, version=info.ref, info=info)

    def _on_our_base(self, base_model: str) -> bool:
        if base_model not in self._same_base:
            self._same_base[base_model] = any(same_base_model(base_model, n) for n in self.base.names())
        return self._same_base[base_model]
