"""Name resolution and scopes against a hand-made registry snapshot (no servers, no database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.platform.refs import VersionRef
from tuneloop.serve.auth.keys import Principal
from tuneloop.serve.errors import OpenAIError
from tuneloop.serve.routing.resolver import BaseModel, Resolver
from tuneloop.serve.routing.snapshot import Snapshot, VersionInfo

BASE = "/models/tiny"


def version(ref: str, serving: str = "lora", method: str = "lora", base: str = BASE) -> VersionInfo:
    parsed = VersionRef.of(ref)
    return VersionInfo(ref, parsed.adapter, parsed.number, method, serving, base)  # type: ignore[arg-type]


SNAPSHOT = Snapshot(
    event_id=1,
    versions={
        v.ref: v
        for v in (
            version("support@1"),
            version("support@2"),
            version("billing@1"),
            version("ft@1", "engine", "full"),
            version("scaled@1", "none", "ia3"),
            version("soft@1", "prompt_embeddings", "prompt_tuning"),
            version("alien@1", base="/models/other"),
        )
    },
    aliases={"support-bot": "support@2", "billing-bot": "billing@1", "ia3-bot": "scaled@1"},
)
LIVE = {"support-bot": "support@1", "billing-bot": "billing@1"}  # support-bot@2 not loaded yet
SUPPORT = Principal(prefix="tl-1", admin=False, scopes=frozenset({"support-bot"}))
ADMIN = Principal(prefix="tl-2", admin=True, scopes=frozenset())


@pytest.fixture
def resolver() -> Resolver:
    return Resolver(BaseModel(public="tiny", engine=BASE))


def error(resolver: Resolver, name: str, who: Principal = ADMIN) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        resolver.resolve(name, who, SNAPSHOT, LIVE)
    return caught.value


def test_base_alias_and_pinned_versions(resolver: Resolver) -> None:
    base = resolver.resolve("tiny", SUPPORT, SNAPSHOT, LIVE)
    assert (base.kind, base.engine_model, base.version) == ("base", BASE, "base")
    alias = resolver.resolve("support-bot", SUPPORT, SNAPSHOT, LIVE)
    # The switched version, not the registry's: support@2 is not loaded yet.
    assert (alias.engine_model, alias.alias, alias.version) == ("support@1", "support-bot", "support@1")
    pinned = resolver.resolve("support@2", SUPPORT, SNAPSHOT, LIVE)
    assert (pinned.engine_model, pinned.alias, pinned.requested) == ("support@2", "", "support@2")
    by_alias = resolver.resolve("support-bot@2", SUPPORT, SNAPSHOT, LIVE)
    assert by_alias.engine_model == "support@2" and by_alias.requested == "support-bot@2"


def test_out_of_scope_is_the_same_404_as_nonexistent(resolver: Resolver) -> None:
    bodies = set()
    for name in ("billing-bot", "billing@1", "billing-bot@1", "nope", "support@9", "nope@1", "@1"):
        caught = error(resolver, name, SUPPORT)
        assert caught.status == 404
        bodies.add(str(caught.body()).replace(name, "NAME"))
    assert len(bodies) == 1


def test_unservable_versions_say_why(resolver: Resolver) -> None:
    caught = error(resolver, "ft@1")
    assert caught.status == 400 and "tuneloop serve --model ft@1" in caught.message
    caught = error(resolver, "scaled@1")
    assert caught.status == 400 and "ia3" in caught.message
    caught = error(resolver, "alien@1")
    # The other base is a folder of some machine: the message says what is wrong without naming it.
    assert caught.status == 400 and "another base model" in caught.message
    assert "/models/other" not in caught.message
    caught = error(resolver, "ia3-bot")  # an alias the follower refused and never switched
    assert caught.status == 400 and "ia3" in caught.message


def test_visible_models_per_key(resolver: Resolver) -> None:
    seen = {e.id: e for e in resolver.visible(SUPPORT, SNAPSHOT, LIVE)}
    assert set(seen) == {"tiny", "support-bot", "support@1", "support@2"}
    assert seen["support-bot"].parent == "tiny" and seen["support-bot"].root == "support@1"
    assert seen["tiny"].parent is None
    admin = {e.id for e in resolver.visible(ADMIN, SNAPSHOT, LIVE)}
    assert {"billing-bot", "billing@1"} <= admin and not {"ft@1", "scaled@1", "alien@1"} & admin


def test_a_replica_serving_a_full_finetune_routes_it_to_its_base(tmp_path: Path) -> None:
    resolver = Resolver(BaseModel(public="ft@1", engine=str(tmp_path), version="ft@1"))
    target = resolver.resolve("ft@1", ADMIN, SNAPSHOT, {})
    assert (target.kind, target.engine_model) == ("base", str(tmp_path))


def test_scopes_name_aliases_or_adapters() -> None:
    by_adapter = Principal(prefix="x", admin=False, scopes=frozenset({"billing"}))
    assert by_adapter.may_use("billing", SNAPSHOT) and not by_adapter.may_use("support", SNAPSHOT)
    assert SUPPORT.may_use("support", SNAPSHOT) and not SUPPORT.may_use("billing", SNAPSHOT)
    assert ADMIN.may_use("anything", SNAPSHOT)


def test_candidates_are_for_admin_keys_and_rejected_versions_for_nobody(resolver: Resolver) -> None:
    snapshot = Snapshot(
        event_id=2,
        versions={
            "support@1": VersionInfo("support@1", "support", 1, "lora", "lora", BASE, "live"),
            "support@3": VersionInfo("support@3", "support", 3, "lora", "lora", BASE, "candidate"),
            "support@4": VersionInfo("support@4", "support", 4, "lora", "lora", BASE, "rejected"),
        },
        aliases={"support-bot": "support@1"},
    )
    live = {"support-bot": "support@1"}
    assert resolver.resolve("support@3", ADMIN, snapshot, live).version == "support@3"
    with pytest.raises(OpenAIError) as hidden:
        resolver.resolve("support@3", SUPPORT, snapshot, live)
    assert hidden.value.code == "model_not_found"  # the same 404 as a version that does not exist
    for who in (ADMIN, SUPPORT):
        with pytest.raises(OpenAIError) as refused:
            resolver.resolve("support@4", who, snapshot, live)
        assert refused.value.code == "model_not_servable" and "rejected" in refused.value.message
    assert {e.id for e in resolver.visible(SUPPORT, snapshot, live)} == {"tiny", "support-bot", "support@1"}
    assert "support@3" in {e.id for e in resolver.visible(ADMIN, snapshot, live)}
    assert "support@4" not in {e.id for e in resolver.visible(ADMIN, snapshot, live)}
