"""Property-based tests of the API against its own OpenAPI schema (schemathesis 4): generated
valid and invalid requests, with the token, must never get a 5xx or a response that breaks the
schema. Runs on SQLite and PostgreSQL; bounded to MAX_EXAMPLES per operation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from cryptography.fernet import Fernet
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import Case

from api.app import create_app
from keystore import Keystore, MasterKey, Settings
from keystore.db import create_keystore_engine
from tests.conftest import secret_for
from tests.test_api_support import AUTH, TOKEN, api_settings

MAX_EXAMPLES = 30
EXERCISED: Counter[str] = Counter()  # cases per operation, for the record


def _schema_only_app() -> FastAPI:
    """An app to read the OpenAPI document from; its keystore is never connected to. (The
    schema is loaded at import because schemathesis's fixture loader does not run on pytest 9;
    every case is sent to the per-test `api_app` instead.)"""
    idle = Keystore(create_keystore_engine("sqlite://"), MasterKey([Fernet.generate_key()]))
    return create_app(Settings(api_token=TOKEN), idle)


# The token as the schema's `bearer` scheme (not a bare header), so schemathesis knows which
# requests carry credentials and which it deliberately sent without them.
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    _schema_only_app(),
    headers=AUTH,
    config=schemathesis.Config.from_dict({"auth": {"openapi": {"bearer": {"bearer": TOKEN}}}}),
)


@pytest.fixture
def api_app(ks: Keystore, tmp_path: Path) -> FastAPI:
    app = create_app(api_settings(tmp_path, rate="1000000/minute"), ks)
    # Some keys to find, change and delete (ids 1-3), so generated ids sometimes hit real rows.
    for provider in ("anthropic", "anthropic", "openai"):
        ks.add_key(name="seed", provider=provider, secret=secret_for("schema"))
    return app


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_conforms_to_its_schema(case: Case, api_app: FastAPI) -> None:
    probe = "" if case.method.upper() == case.operation.method.upper() else " (other methods)"
    EXERCISED[case.operation.label + probe] += 1
    case.call_and_validate(app=api_app)


@pytest.fixture(scope="module", autouse=True)
def report_exercised() -> Iterator[None]:
    yield
    total = sum(EXERCISED.values())
    operations = {label.removesuffix(" (other methods)") for label in EXERCISED}
    print(f"\nschemathesis: {total} cases over {len(operations)} operations")
    for operation, count in sorted(EXERCISED.items()):
        print(f"  {count:4d}  {operation}")
