"""Flow-test fixtures:

- `prefect_api`: ONE Prefect test server for the whole session (it takes ~10 s to start);
- `flow_env`: a fresh SQLite keystore, master key and KEYRELAY_HOME per test, exported through
  the environment exactly as a worker would see it, with both SDK base URLs on the emulator;
- `server_process`: a real `python -m deployments.serve` child process picking up deployed runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from api.emulator import EmulatorConfig, RunningEmulator, serve_emulator
from keystore import MasterKey, open_keystore
from tests.flows.support import FlowEnv, PrefectServer, ServeProcess, serving


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_DATABASE_CONNECTION_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        database = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).split(":///", 1)[1]
        yield PrefectServer(api_url=str(PREFECT_API_URL.value()), database=Path(database))


@pytest.fixture
def prefect_api(prefect_server: PrefectServer) -> str:
    return prefect_server.api_url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def provider() -> Iterator[RunningEmulator]:
    """The emulator on the real clock (flows compare resets with real time)."""
    with serve_emulator(EmulatorConfig()) as running:
        yield running


@pytest.fixture
def flow_env(
    prefect_api: str, provider: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FlowEnv]:
    from flows.runtime import reset_flow_keystore

    provider.admin.reset(restore_config=True)
    master = Fernet.generate_key().decode()
    home = tmp_path / "home"
    env = {
        "KEYRELAY_HOME": str(home),
        "KEYRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'keystore.db'}",
        "KEYRELAY_MASTER_KEY": master,
        "ANTHROPIC_BASE_URL": provider.base_url,
        "OPENAI_BASE_URL": provider.openai_base_url,
        "PREFECT_API_URL": prefect_api,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_flow_keystore()
    store = open_keystore(env["KEYRELAY_DATABASE_URL"], master_key=MasterKey([master.encode()]))
    yield FlowEnv(store=store, env=env, emulator=provider, home=home)
    store.close()
    reset_flow_keystore()


@pytest.fixture
def server_process(flow_env: FlowEnv, tmp_path: Path) -> Iterator[ServeProcess]:
    """`python -m deployments.serve` against the test server, like `keyrelay serve`."""
    with serving(flow_env, tmp_path / "serve.log") as served:
        yield served
