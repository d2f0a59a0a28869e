"""A secret appears in no log line, repr, exception, public model, audit row or database column."""

from __future__ import annotations

import logging
import pickle
from datetime import timedelta

import pytest
from sqlalchemy import text

from keystore import DuplicateKey, InvalidInput, Keystore, NoKeyAvailable, RateLimitSignal
from tests.conftest import T0, TABLES, secret_for


def test_no_secret_anywhere(ks: Keystore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.DEBUG)  # statements and parameters
    secrets = [secret_for("one"), secret_for("two")]
    seen: list[str] = []
    try:
        keys = [
            ks.add_key(name=f"k{i}", provider="anthropic", secret=s) for i, s in enumerate(secrets)
        ]
        seen += [repr(k) for k in keys] + [k.model_dump_json() for k in keys]
        for attempt in (
            lambda: ks.add_key(name="dup", provider="anthropic", secret=secrets[0]),
            lambda: ks.add_key(name="", provider="anthropic", secret=secrets[1]),
            lambda: ks.update_key(keys[0].id, secret=secrets[1]),
        ):
            with pytest.raises((DuplicateKey, InvalidInput)) as err:
                attempt()
            seen += [str(err.value), repr(err.value)]
        lease = ks.acquire(provider="anthropic", holder="t")
        assert lease.secret() in secrets
        seen += [repr(lease), str(pickle.loads(pickle.dumps(lease))), repr(vars(ks))]
        ks.mark_limited(
            lease.key_id, RateLimitSignal("rate_limit", T0 + timedelta(minutes=1), True, "h")
        )
        ks.release(lease)
        ks.acquire(provider="anthropic", holder="t")
        with pytest.raises(NoKeyAvailable) as exhausted:
            ks.acquire(provider="anthropic", holder="t")
        seen += [
            str(exhausted.value),
            ks.explain("anthropic").model_dump_json(),
            ks.status().model_dump_json(),
        ]
        seen += [e.model_dump_json() for e in ks.audit_events()]
        ks.rotate_master_key()
        with ks.engine.connect() as conn:
            for table in TABLES:
                seen += [repr(row) for row in conn.execute(text(f"SELECT * FROM {table}"))]
    finally:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    seen += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert any("INSERT INTO keys" in line for line in seen), "SQL logging was not captured"
    for secret in secrets:
        leaks = [line for line in seen if secret in line or secret[13:40] in line]
        assert leaks == []
