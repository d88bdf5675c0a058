from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select

from tuneloop.platform.errors import ConfigError, ConflictError, NotFoundError, StaleAliasError
from tuneloop.platform.registry import Registry, db
from tuneloop.platform.registry.tables import Adapter, Alias, Base, Event, Version, VersionStatus


@pytest.fixture
def registry(new_db_url: Callable[[str], str]) -> Registry:
    """A fresh registry, once on SQLite and once on the test session's PostgreSQL."""
    return Registry(new_db_url("reg"))


def _add(registry: Registry, name: str = "support", **kw: object) -> Version:
    return registry.add_version(
        name, base_model="/models/tiny", method="lora", store=lambda n: f"mem://{n}", **kw
    )  # type: ignore[arg-type]


def head_revision() -> str | None:
    """The newest migration, as Alembic's script directory says (never a literal to keep in step)."""
    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def test_fresh_database_is_migrated_to_head(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'sub' / 'reg.db'}")
    head = head_revision()
    assert head is not None and db.current_revision(registry.engine) == head
    # Opening again is a no-op, not an error.
    assert db.current_revision(Registry(f"sqlite:///{tmp_path / 'sub' / 'reg.db'}").engine) == head


def test_migrations_apply_one_by_one_then_reopen(new_db_url: Callable[[str], str]) -> None:
    # Every revision on its own, as an old database meets a new release, then a plain open on top.
    url = new_db_url("steps")
    engine = db.make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    revisions = [r.revision for r in ScriptDirectory.from_config(config).walk_revisions()][::-1]
    assert len(revisions) >= 2
    for revision in revisions:
        db.upgrade(engine, revision)
        assert db.current_revision(engine) == revision
    registry = Registry(url)
    assert db.current_revision(registry.engine) == head_revision()
    _add(registry)
    assert registry.get_version("support@1").number == 1


def test_migrations_match_the_models(new_db_url: Callable[[str], str]) -> None:
    # What `alembic revision --autogenerate` would find: nothing, or a migration is missing.
    registry = Registry(new_db_url("reg"))
    with registry.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_api_keys_store_hashes_and_bump_the_event_id(registry: Registry) -> None:
    before = registry.last_event_id()
    row = registry.add_api_key("ab" * 32, "tl-abcdefg", scopes=["b", "a", "a"], admin=False)
    assert row.scopes == ["a", "b"] and not row.admin
    assert registry.last_event_id() > before
    found = registry.find_api_key("ab" * 32)
    assert found is not None and found.prefix == "tl-abcdefg"
    assert registry.find_api_key("cd" * 32) is None
    assert [k.key_hash for k in registry.api_keys()] == ["ab" * 32]


def test_versions_are_numbered_per_adapter(registry: Registry) -> None:
    assert [_add(registry).number for _ in range(3)] == [1, 2, 3]
    other = _add(registry, "billing")
    assert other.number == 1 and other.ref == "billing@1"
    v = registry.get_version("support@2")
    assert v.uri == "mem://2" and v.status == VersionStatus.CANDIDATE


def test_failed_store_writes_no_row(registry: Registry) -> None:
    def broken(_number: int) -> str:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        registry.add_version("support", base_model="/m", method="lora", store=broken)
    with registry.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Adapter)) == 0
        assert session.scalar(select(func.count()).select_from(Event)) == 0


def test_other_base_model_is_a_conflict(registry: Registry) -> None:
    _add(registry)
    with pytest.raises(ConflictError, match="/models/tiny"):
        registry.add_version("support", base_model="/models/other", method="lora", store=lambda n: "x")


def test_promote_and_rollback_move_alias_and_statuses(registry: Registry) -> None:
    _add(registry), _add(registry)
    registry.promote("support-bot", "support@1")
    assert registry.aliases() == {"support-bot": "support@1"}
    registry.promote("support-bot", "support@2")
    assert registry.get_version("support-bot").number == 2
    assert registry.get_version("support@1").status == VersionStatus.RETIRED
    assert registry.get_version("support@2").status == VersionStatus.LIVE
    back = registry.rollback("support-bot")
    assert back.ref == "support@1"
    assert registry.get_version("support@1").status == VersionStatus.LIVE
    assert registry.get_version("support@2").status == VersionStatus.RETIRED
    kinds = [e.kind for e in registry.history("support")]
    assert kinds == [
        "version.added",
        "version.added",
        "alias.promoted",
        "alias.promoted",
        "alias.rolled_back",
    ]
    promotions = registry.history("support", kinds=["alias.promoted", "alias.rolled_back"])
    assert [e.kind for e in promotions] == ["alias.promoted", "alias.promoted", "alias.rolled_back"]
    assert registry.history("support", since=promotions[-1].created_at)[0].id == promotions[-1].id
    assert registry.history("support", since=datetime.now(UTC) + timedelta(minutes=1)) == []


def test_failed_promotion_changes_nothing(registry: Registry) -> None:
    _add(registry), _add(registry, "billing")
    registry.promote("bot", "support@1")
    with pytest.raises(ConflictError):
        registry.promote("bot", "billing@1")
    assert registry.aliases() == {"bot": "support@1"}
    assert registry.get_version("billing@1").status == VersionStatus.CANDIDATE
    assert [e.kind for e in registry.history("billing")] == ["version.added"]


def test_lookup_errors_name_the_reference(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="'nope@1'"):
        registry.get_version("nope@1")
    with pytest.raises(NotFoundError, match="ADAPTER@NUMBER"):
        registry.get_version("support@x")
    with pytest.raises(NotFoundError):
        registry.rollback("nobody")


def test_jobs_evaluations_and_lineage(registry: Registry) -> None:
    registry.add_job("raysubmit_1", "support", {"method": "lora"})
    first = _add(registry, job_id="raysubmit_1", data_hash="abc")
    second = _add(registry, parent="support@1", metrics={"loss": 1.0})
    assert second.parent_id == first.id
    registry.add_evaluation("support@2", "golden", {"exact_match": 0.5})
    assert registry.history("support")[-1].detail == {"exact_match": 0.5}


def test_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        Registry("not a url")
    with pytest.raises(ConfigError, match="cannot open registry"):
        Registry("nosuchdialect://x")


def test_a_revoked_key_is_found_no_more_and_bumps_the_event_id(registry: Registry) -> None:
    registry.add_api_key("ab" * 32, "tl-abcdefg", scopes=["a"], admin=False)
    registry.add_api_key("cd" * 32, "tl-hijklmn", scopes=[], admin=True)
    before = registry.last_event_id()
    revoked = registry.revoke_api_key("tl-abcdefg")
    assert revoked.revoked_at is not None and registry.last_event_id() > before
    assert registry.find_api_key("ab" * 32) is None
    assert [k.prefix for k in registry.api_keys()] == ["tl-hijklmn"]
    with pytest.raises(NotFoundError, match="no active key 'tl-abcdefg'"):
        registry.revoke_api_key("tl-abcdefg")  # already revoked: an error, and nothing changes
    registry.add_api_key("ef" * 32, "tl-hijklmn", scopes=["a"], admin=False)  # same shown prefix
    with pytest.raises(ConflictError, match="2 active keys share the prefix"):
        registry.revoke_api_key("tl-hijklmn")
    assert len(registry.api_keys()) == 2


def _live(registry: Registry, adapter: str = "support") -> list[str]:
    return [v.ref for v in registry.list_versions(adapter) if v.status == VersionStatus.LIVE]


def _alias_row(registry: Registry, name: str) -> tuple[str, str | None]:
    with registry.transaction() as session:
        row = session.scalar(select(Alias).where(Alias.name == name))
        assert row is not None
        return row.version.ref, row.previous_version.ref if row.previous_version else None


def _race(calls: list[Callable[[], object]]) -> list[object]:
    """Run every call at once on its own thread (a barrier releases them together); results or errors."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a promoter hung"
    return results


def test_concurrent_promotions_leave_one_live_version_and_the_right_rollback_target(
    new_db_url: Callable[[str], str],
) -> None:
    # Each promoter has its own Registry (its own engine and connections), as separate processes would.
    url = new_db_url("race")
    registry = Registry(url)
    for _ in range(7):
        _add(registry)
    registry.promote("bot", "support@1")
    promoters = [Registry(url) for _ in range(7)]
    # Six move the alias; the seventh re-promotes the live support@1 (a no-op only if it comes first).
    targets = [f"support@{n}" for n in range(2, 8)] + ["support@1"]
    results = _race([lambda r=r, t=t: r.promote("bot", t) for r, t in zip(promoters, targets, strict=True)])
    assert not [r for r in results if isinstance(r, Exception)], results
    promoted = [e.message.split(" -> ")[1] for e in registry.history("support") if e.kind == "alias.promoted"]
    assert len(promoted) == 8  # the first, then every racer exactly once
    current, previous = _alias_row(registry, "bot")
    assert current == promoted[-1] and previous == promoted[-2]
    assert _live(registry) == [current]
    assert registry.rollback("bot").ref == previous
    assert _live(registry) == [previous] and _alias_row(registry, "bot") == (previous, current)
    for r in promoters:
        r.engine.dispose()


def test_promotions_against_one_expected_version_let_exactly_one_win(
    new_db_url: Callable[[str], str],
) -> None:
    url = new_db_url("expected")
    registry = Registry(url)
    for _ in range(5):
        _add(registry)
    registry.promote("bot", "support@1")
    promoters = [Registry(url) for _ in range(4)]
    results = _race(
        [
            lambda r=r, n=n: r.promote("bot", f"support@{n}", expected="support@1")
            for n, r in enumerate(promoters, 2)
        ]
    )
    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1 and all(isinstance(e, StaleAliasError) for e in losers), results
    won = winners[0].ref  # type: ignore[attr-defined]
    assert _alias_row(registry, "bot") == (won, "support@1")
    assert _live(registry) == [won]
    assert f"points at {won}, not support@1" in str(losers[0])
    for r in promoters:
        r.engine.dispose()


def test_a_rollback_made_meanwhile_is_not_overwritten(registry: Registry) -> None:
    # The gate compared its candidate with support@2; an operator rolled back to support@1 meanwhile.
    for _ in range(3):
        _add(registry)
    registry.promote("bot", "support@1")
    registry.promote("bot", "support@2")
    registry.rollback("bot", expected="support@2")
    with pytest.raises(StaleAliasError, match="'bot' points at support@1, not support@2"):
        registry.promote("bot", "support@3", expected="support@2")
    assert _alias_row(registry, "bot") == ("support@1", "support@2")
    assert _live(registry) == ["support@1"]
    assert registry.get_version("support@3").status == VersionStatus.CANDIDATE
    with pytest.raises(StaleAliasError):
        registry.rollback("bot", expected="support@2")
    with pytest.raises(StaleAliasError, match="points at nothing"):
        registry.promote("new-bot", "support@3", expected="support@1")
    registry.promote("new-bot", "support@3", expected="")  # "" = the alias must not exist yet
    with pytest.raises(StaleAliasError):
        registry.promote("new-bot", "support@3", expected="")
