"""Two requests racing to disable or delete a provider's last two enabled keys: exactly one may
win, on SQLite and PostgreSQL (the keystore locks the provider's key rows)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from keystore import Keystore
from tests.conftest import secret_for
from tests.test_api_support import AUTH, api_settings

ROUNDS = 8

# (first request, second request): each would leave the provider with no enabled key if the other
# had not happened.
Step = tuple[str, dict[str, bool] | None]  # method, body
RACES: dict[str, tuple[Step, Step]] = {
    "delete+delete": (("DELETE", None), ("DELETE", None)),
    "disable+disable": (("PATCH", {"enabled": False}), ("PATCH", {"enabled": False})),
    "disable+delete": (("PATCH", {"enabled": False}), ("DELETE", None)),
}
WIN = {"DELETE": 204, "PATCH": 200}


async def _race(
    client: httpx.AsyncClient, ids: tuple[int, ...], race: tuple[Step, Step]
) -> list[int]:
    requests = [
        client.request(method, f"/keys/{key_id}", json=body)
        for key_id, (method, body) in zip(ids, race, strict=True)
    ]
    return [r.status_code for r in await asyncio.gather(*requests)]


@pytest.mark.parametrize("race", list(RACES))
def test_exactly_one_of_two_racing_requests_wins(ks: Keystore, tmp_path: Path, race: str) -> None:
    app = create_app(api_settings(tmp_path), ks)
    steps = RACES[race]

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=AUTH
        ) as client:
            for round_ in range(ROUNDS):
                ids = tuple(
                    ks.add_key(
                        name=f"r{round_}-{i}", provider="openai", secret=secret_for("race")
                    ).id
                    for i in range(2)
                )
                statuses = await _race(client, ids, steps)

                winners = [
                    s for s, (method, _) in zip(statuses, steps, strict=True) if s == WIN[method]
                ]
                assert len(winners) == 1, statuses
                assert sorted(statuses).count(409) == 1, statuses
                enabled = [k for k in ks.list_keys("openai") if k.enabled]
                assert len(enabled) == 1
                # Clear the round: the survivor goes, forced.
                for key in ks.list_keys("openai"):
                    ks.delete_key(key.id, force=True)

    asyncio.run(run())
