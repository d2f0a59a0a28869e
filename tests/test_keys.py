"""Key rows through the facade: add, list, update, delete, reset; masking and validation."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keystore import DuplicateKey, InvalidInput, KeyNotFound, Keystore, LastEnabledKey
from keystore.models import AuditEventPublic
from tests.conftest import T0, secret_for


def test_add_returns_public_view_without_secret(ks: Keystore) -> None:
    secret = secret_for("a")
    key = ks.add_key(
        name="team-a",
        provider="anthropic",
        secret=secret,
        priority=5,
        max_concurrency=3,
        group="org-1",
    )
    dumped = key.model_dump_json()
    assert secret not in dumped and secret not in repr(key)
    assert key.masked == f"{secret[:7]}...{secret[-4:]}"
    assert (key.name, key.provider, key.priority, key.max_concurrency, key.group) == (
        "team-a",
        "anthropic",
        5,
        3,
        "org-1",
    )
    assert key.state == "available" and key.active_leases == 0 and key.uses == 0
    assert key.created_at == T0 and key.created_at.tzinfo is not None
    assert len(key.fingerprint) == 16


def test_same_secret_twice_is_refused(ks: Keystore) -> None:
    secret = secret_for("dup")
    first = ks.add_key(name="one", provider="anthropic", secret=secret)
    with pytest.raises(DuplicateKey) as err:
        ks.add_key(name="two", provider="openai", secret=secret)
    assert err.value.existing_id == first.id
    assert secret not in str(err.value)
    assert [k.name for k in ks.list_keys()] == ["one"]


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"provider": "gemini"}, "provider"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"name": ""}, "name"),
        ({"secret": ""}, "secret"),
        ({"secret": " padded-secret-value "}, "secret"),
    ],
)
def test_invalid_fields_name_the_field_not_the_value(
    ks: Keystore, fields: dict, field_name: str
) -> None:
    base = {"name": "k", "provider": "anthropic", "secret": "sk-valid-secret-value-1234"}
    with pytest.raises(InvalidInput) as err:
        ks.add_key(**(base | fields))
    assert str(err.value).startswith(field_name)
    assert "padded-secret-value" not in str(err.value)
    assert ks.list_keys() == []


def test_list_orders_by_provider_priority_id_and_filters(ks: Keystore) -> None:
    ks.add_key(name="o1", provider="openai", secret=secret_for("o1"))
    ks.add_key(name="a-low", provider="anthropic", secret=secret_for("a1"), priority=200)
    ks.add_key(name="a-high", provider="anthropic", secret=secret_for("a2"), priority=1)
    ks.add_key(name="a-high-2", provider="anthropic", secret=secret_for("a3"), priority=1)
    assert [k.name for k in ks.list_keys()] == ["a-high", "a-high-2", "a-low", "o1"]
    assert [k.name for k in ks.list_keys("openai")] == ["o1"]
    with pytest.raises(InvalidInput):
        ks.list_keys("nope")


def test_update_changes_fields_and_secret(ks: Keystore) -> None:
    key = ks.add_key(name="k", provider="anthropic", secret=secret_for("old"))
    ks.add_key(name="other", provider="anthropic", secret=secret_for("other"))
    new_secret = secret_for("new")
    updated = ks.update_key(
        key.id, name="renamed", priority=7, max_concurrency=4, secret=new_secret
    )
    assert (updated.name, updated.priority, updated.max_concurrency) == ("renamed", 7, 4)
    assert updated.fingerprint != key.fingerprint and updated.masked.endswith(new_secret[-4:])
    lease = ks.acquire(provider="anthropic", holder="t")
    assert lease.key_id == key.id and lease.secret() == new_secret
    with pytest.raises(InvalidInput):
        ks.update_key(key.id, unknown_field=1)
    with pytest.raises(KeyNotFound):
        ks.update_key(999, name="x")


def test_last_enabled_key_cannot_be_disabled_or_deleted(ks: Keystore) -> None:
    a = ks.add_key(name="a", provider="anthropic", secret=secret_for("a"))
    b = ks.add_key(name="b", provider="anthropic", secret=secret_for("b"))
    ks.add_key(name="o", provider="openai", secret=secret_for("o"))
    ks.update_key(a.id, enabled=False)
    with pytest.raises(LastEnabledKey):
        ks.update_key(b.id, enabled=False)
    with pytest.raises(LastEnabledKey):
        ks.delete_key(b.id)
    ks.delete_key(a.id)  # disabled keys can always go
    assert [k.name for k in ks.list_keys("anthropic")] == ["b"]
    ks.delete_key(b.id, force=True)
    assert ks.list_keys("anthropic") == []
    with pytest.raises(KeyNotFound):
        ks.delete_key(b.id)


def test_delete_and_audit_trail(ks: Keystore) -> None:
    a = ks.add_key(name="a", provider="openai", secret=secret_for("a"))
    ks.add_key(name="b", provider="openai", secret=secret_for("b"))
    ks.update_key(a.id, priority=3)
    ks.delete_key(a.id)
    types = [e.type for e in ks.audit_events(key_id=a.id)]
    assert types == ["key_deleted", "key_updated", "key_added"]
    assert ks.verify_audit().ok


def test_a_change_that_committed_is_returned_even_if_the_key_is_deleted_right_after(
    ks: Keystore,
) -> None:
    """Another process deletes the key the moment a change commits (here: an audit hook, which
    runs after the commit). The change took effect, so its caller gets the key as the change left
    it, not KeyNotFound (the concurrency hunt saw a cap raise that took effect reported as one)."""
    spare = ks.add_key(name="spare", provider="anthropic", secret=secret_for("spare"))
    first = ks.add_key(name="k", provider="anthropic", secret=secret_for("k"))

    def delete_on_commit(event: AuditEventPublic) -> None:
        if event.key_id != spare.id and event.type != "key_deleted":
            ks.delete_key(event.key_id)

    ks.add_audit_hook(delete_on_commit)
    changed = ks.update_key(first.id, max_concurrency=3)
    added = ks.add_key(name="k2", provider="anthropic", secret=secret_for("k2"), priority=7)
    assert (changed.id, changed.max_concurrency) == (first.id, 3)
    assert (added.name, added.priority) == ("k2", 7)
    assert [k.id for k in ks.list_keys()] == [spare.id]  # both were deleted
    with pytest.raises(KeyNotFound):
        ks.update_key(first.id, max_concurrency=2)  # not there when the change ran: not found


def test_nulls_control_characters_and_impossible_ids_are_clean_errors(ks: Keystore) -> None:
    key = ks.add_key(name="k", provider="openai", secret=secret_for("k"), group="g")
    for field in ("name", "priority", "max_concurrency", "enabled", "secret"):
        with pytest.raises(InvalidInput, match=f"{field} cannot be null"):
            ks.update_key(key.id, **{field: None})
    assert ks.update_key(key.id, group=None).group is None  # clearing the group is fine
    for bad in ("a\x00b", "tab\there"):
        with pytest.raises(InvalidInput, match="control characters"):
            ks.add_key(name=bad, provider="openai", secret=secret_for("x"))
        with pytest.raises(InvalidInput, match="control characters"):
            ks.update_key(key.id, group=bad)
    for impossible in (0, -1, 2**31, 10**20):
        with pytest.raises(KeyNotFound):
            ks.get_key(impossible)
        with pytest.raises(KeyNotFound):
            ks.delete_key(impossible)
        assert ks.audit_events(key_id=impossible) == []


def test_a_deleted_keys_id_is_never_given_to_another_key(ks: Keystore) -> None:
    ks.add_key(name="first", provider="openai", secret=secret_for("first"))
    last = ks.add_key(name="last", provider="openai", secret=secret_for("last"))
    ks.delete_key(last.id)

    newer = ks.add_key(name="newer", provider="openai", secret=secret_for("newer"))

    assert newer.id > last.id  # a stale client's PATCH /keys/{last.id} finds nothing
    assert [e.key_id for e in ks.audit_events(type="key_added")] == [newer.id, last.id, 1]


def test_a_response_on_a_deleted_key_is_key_not_found(ks: Keystore) -> None:
    ks.add_key(name="keep", provider="anthropic", secret=secret_for("keep"))
    gone = ks.add_key(name="gone", provider="anthropic", secret=secret_for("gone"))
    ks.delete_key(gone.id)  # while a call on it was out

    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": (T0 + timedelta(minutes=1)).isoformat(),
    }
    with pytest.raises(KeyNotFound):  # not an IntegrityError from the limits table
        ks.record_response(gone.id, provider="anthropic", status=200, headers=headers)
    assert [k.name for k in ks.list_keys()] == ["keep"]
