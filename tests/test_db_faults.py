"""The keystore through a PostgreSQL connection that fails: an answer lost after the commit, and a
server that cannot be reached for longer than the retry budget (tests/faulty_link.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.app import create_app
from keystore import Keystore, KeystoreUnreachable, MasterKey
from keystore.db import create_keystore_engine
from tests.conftest import secret_for
from tests.faulty_link import FaultyLink
from tests.test_api_support import AUTH, api_settings

pytestmark = pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
SHORT_RETRIES_S = (0.05, 0.1, 0.2)  # the budget's shape without its 12 s


@pytest.fixture
def link() -> Iterator[FaultyLink]:
    faulty = FaultyLink()
    yield faulty
    faulty.close()


def _held(store_url: str) -> list[str]:
    """Lease ids occupying a slot, read around the link."""
    engine = create_keystore_engine(store_url)
    with engine.connect() as conn:
        held = conn.execute(text("SELECT lease_id FROM lease_slots WHERE lease_id IS NOT NULL"))
        ids = list(held.scalars())
    engine.dispose()
    return ids


def _through(link: FaultyLink, store_url: str, master: MasterKey) -> Keystore:
    engine = create_keystore_engine(link.url(store_url))
    return Keystore(engine, master, retry_delays_s=SHORT_RETRIES_S)


def test_an_acquire_whose_answer_was_lost_takes_one_slot(
    store_url: str, master: MasterKey, link: FaultyLink
) -> None:
    ks = _through(link, store_url, master)
    ks.add_key(name="k", provider="anthropic", secret=secret_for("lost"), max_concurrency=3)
    ks.release(ks.acquire(provider="anthropic", holder="warm-up"))

    link.lose_answer_to(b"UPDATE lease_slots")
    lease = ks.acquire(provider="anthropic", holder="h")

    assert link.answers_lost == 1  # the commit reached the server and its answer did not come back
    assert _held(store_url) == [lease.id]  # the retry found that lease instead of taking another
    assert ks.release(lease)
    assert _held(store_url) == []
    ks.close()


def test_an_unreachable_server_is_a_typed_error_and_the_keystore_recovers(
    store_url: str, master: MasterKey, link: FaultyLink
) -> None:
    ks = _through(link, store_url, master)
    ks.add_key(name="k", provider="openai", secret=secret_for("down"))
    lease = ks.acquire(provider="openai", holder="h")

    link.down()
    with pytest.raises(KeystoreUnreachable) as caught:
        ks.renew(lease)
    assert "could not be reached" in str(caught.value)
    assert f":{link.port}/" in caught.value.location

    link.up()
    ks.renew(lease)
    assert ks.release(lease)
    assert _held(store_url) == []
    ks.close()


def test_the_api_answers_503_with_retry_after_while_the_keystore_is_unreachable(
    store_url: str, master: MasterKey, link: FaultyLink, tmp_path: Path
) -> None:
    ks = _through(link, store_url, master)
    ks.add_key(name="k", provider="openai", secret=secret_for("api"))
    app = create_app(api_settings(tmp_path), ks)
    with TestClient(app, headers=AUTH, raise_server_exceptions=False) as api:
        link.down()
        down = api.get("/keys")
        assert down.status_code == 503
        assert int(down.headers["Retry-After"]) >= 1
        assert "could not be reached" in down.json()["detail"]
        assert "Traceback" not in down.text

        link.up()
        back = api.get("/keys")
        assert back.status_code == 200
        assert [k["name"] for k in back.json()] == ["k"]
    ks.close()


def test_an_add_whose_commit_answer_was_lost_is_one_key_and_no_error(
    store_url: str, master: MasterKey, link: FaultyLink
) -> None:
    ks = _through(link, store_url, master)
    link.lose_answer_to(b"COMMIT")
    added = ks.add_key(name="k", provider="openai", secret=secret_for("add"))

    assert link.answers_lost == 1
    assert [k.id for k in ks.list_keys()] == [added.id]  # not DuplicateKey, not two keys
    assert [e.type for e in ks.audit_events()] == ["key_added"]
    ks.close()


def test_a_delete_whose_commit_answer_was_lost_is_no_error(
    store_url: str, master: MasterKey, link: FaultyLink
) -> None:
    ks = _through(link, store_url, master)
    ks.add_key(name="keep", provider="openai", secret=secret_for("keep"))
    gone = ks.add_key(name="gone", provider="openai", secret=secret_for("gone"))
    link.lose_answer_to(b"COMMIT")
    ks.delete_key(gone.id)  # not KeyNotFound: the first attempt deleted it

    assert link.answers_lost == 1
    assert [k.name for k in ks.list_keys()] == ["keep"]
    assert [e.type for e in ks.audit_events()].count("key_deleted") == 1
    ks.close()


def test_a_write_whose_commit_answer_was_lost_is_written_once(
    store_url: str, master: MasterKey, link: FaultyLink
) -> None:
    ks = _through(link, store_url, master)
    key = ks.add_key(name="k", provider="openai", secret=secret_for("upd"))
    link.lose_answer_to(b"COMMIT")
    ks.update_key(key.id, priority=5)
    link.lose_answer_to(b"COMMIT")
    ks.record("key_rotated", key_id=key.id, run_id="r")

    assert link.answers_lost == 2
    assert [e.type for e in ks.audit_events()] == ["key_rotated", "key_updated", "key_added"]
    assert ks.get_key(key.id).priority == 5
    assert ks.verify_audit().ok
    ks.close()


def test_a_release_whose_answer_was_lost_reports_the_lease_released(
    store_url: str, master: MasterKey, link: FaultyLink
) -> None:
    ks = _through(link, store_url, master)
    ks.add_key(name="k", provider="anthropic", secret=secret_for("rel"))
    lease = ks.acquire(provider="anthropic", holder="h")

    link.lose_answer_to(b"UPDATE lease_slots")
    assert ks.release(lease)  # not "it had expired and was reclaimed"

    assert link.answers_lost == 1
    assert _held(store_url) == []
    ks.close()
