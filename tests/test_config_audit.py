"""RotationConfig persistence and validation; the audit chain, hooks and env migration."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from keystore import AuditEventPublic, ConfigError, Keystore, RotationConfig
from keystore.db import create_keystore_engine
from tests.conftest import secret_for


def test_defaults_match_design() -> None:
    assert RotationConfig().model_dump() == {
        "auto_wait": True,
        "max_wait_s": 28800,
        "inline_wait_max_s": 30,
        "fallback_enabled": False,
        "fallback_provider": "openai",
        "lease_ttl_s": 300,
        "no_reset_cooldown_s": 60,
        "proactive_threshold": 0.95,
        "resume_stagger_s": 1.0,
        "sandbox": "auto",
        "workdir_snapshot_max_mb": 64,
    }


def test_config_is_shared_through_the_database(ks: Keystore, store_url: str) -> None:
    ks.update_config(max_wait_s=600, fallback_enabled=True)
    other = Keystore(create_keystore_engine(store_url), ks.master)
    assert other.config().max_wait_s == 600 and other.config().fallback_enabled is True
    other.close()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nope": 1}, r"unknown config field\(s\) nope; known: auto_wait"),
        ({"max_wait_s": -1}, "max_wait_s"),
        ({"proactive_threshold": 1.5}, "proactive_threshold"),
        ({"fallback_provider": "gemini"}, "fallback_provider"),
        ({"auto_wait": "maybe"}, "auto_wait"),
    ],
)
def test_bad_config_is_rejected_and_nothing_changes(
    ks: Keystore, changes: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ks.update_config(**changes)
    assert ks.config() == RotationConfig()


def test_audit_hooks_fire_after_commit_and_failures_are_contained(ks: Keystore) -> None:
    seen: list[AuditEventPublic] = []

    def broken(event: AuditEventPublic) -> None:
        raise RuntimeError("observer down")

    ks.add_audit_hook(broken)
    ks.add_audit_hook(seen.append)
    key = ks.add_key(name="k", provider="openai", secret=secret_for("k"))
    ks.record("pool_waiting", run_id="run-1", until="later")
    assert [(e.type, e.key_id, e.run_id) for e in seen] == [
        ("key_added", key.id, None),
        ("pool_waiting", None, "run-1"),
    ]
    assert seen[0].id == ks.audit_events(type="key_added")[0].id


def test_audit_filters_and_order(ks: Keystore) -> None:
    a = ks.add_key(name="a", provider="openai", secret=secret_for("a"))
    ks.record("key_rotated", key_id=a.id, run_id="r1", from_key=a.id)
    ks.record("pool_resumed", run_id="r2")
    assert [e.type for e in ks.audit_events()] == ["pool_resumed", "key_rotated", "key_added"]
    assert [e.type for e in ks.audit_events(run_id="r1")] == ["key_rotated"]
    assert [e.type for e in ks.audit_events(limit=1)] == ["pool_resumed"]
    with pytest.raises(ValueError):
        ks.record("made_up_type")  # type: ignore[arg-type]


def test_verify_detects_edited_and_deleted_rows(ks: Keystore) -> None:
    for i in range(4):
        ks.add_key(name=f"k{i}", provider="openai", secret=secret_for(str(i)))
    assert ks.verify_audit().ok and ks.verify_audit().rows == 4
    with ks.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET run_id = 'forged' WHERE id = 2"))
    report = ks.verify_audit()
    assert (report.ok, report.first_bad_id) == (False, 2)
    with ks.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET run_id = NULL WHERE id = 2"))
        conn.execute(text("DELETE FROM audit_events WHERE id = 3"))
    report = ks.verify_audit()
    assert (report.ok, report.first_bad_id) == (False, 4)


def test_env_tokens_are_imported_once(ks: Keystore) -> None:
    env = {
        "ANTHROPIC_API_KEY": secret_for("env-a"),
        "OPENAI_API_KEY": "sk-proj-" + "z" * 40,
        "CLAUDE_CODE_OAUTH_TOKEN": "",
        "UNRELATED": "x",
    }
    added = ks.migrate_env_tokens(env)
    assert sorted((k.provider, k.name) for k in added) == [
        ("anthropic", "env:ANTHROPIC_API_KEY"),
        ("openai", "env:OPENAI_API_KEY"),
    ]
    assert ks.migrate_env_tokens(env) == []
    ks.delete_key(added[0].id, force=True)
    assert ks.migrate_env_tokens(env) == []  # deleted on purpose: not brought back
    assert len(ks.audit_events(type="key_migrated")) == 2
