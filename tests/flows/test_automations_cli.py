"""`keyrelay automations apply|list|rm` against the session's Prefect test server: apply is
idempotent (twice creates nothing new; a changed option updates in place; a paused automation is
re-enabled and a duplicate removed), list shows them, rm removes only keyrelay's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.events.actions import DoNothing
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from api.cli import main
from deployments.automations import (
    AUTOMATION_NAMES,
    CRASH_SILENT,
    KEY_UNUSABLE,
    AutomationOptions,
    keyrelay_automations,
    remove_automations,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(prefect_api: str, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """`keyrelay ...` in this process (the Prefect settings of the test server); returns the
    exit code and the JSON it printed."""

    def run(*args: str) -> tuple[int, Any]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, (json.loads(out) if code == 0 and "--json" in args else out + err)

    yield run
    with get_client(sync_client=True) as client:
        remove_automations(client)


def _outcomes(result: dict[str, Any]) -> dict[str, str]:
    return {a["name"]: a["outcome"] for a in result["automations"]}


def test_apply_is_idempotent_and_list_and_rm_show_and_remove(cli: Any) -> None:
    code, first = cli("automations", "apply", "--json")
    assert code == 0 and _outcomes(first) == dict.fromkeys(AUTOMATION_NAMES, "created")
    ids = {a["name"]: a["id"] for a in first["automations"]}
    code, again = cli("automations", "apply", "--json")
    assert _outcomes(again) == dict.fromkeys(AUTOMATION_NAMES, "unchanged")
    assert {a["name"]: a["id"] for a in again["automations"]} == ids

    code, changed = cli("automations", "apply", "--crash-after-s", "120", "--json")
    assert _outcomes(changed) == {
        **dict.fromkeys(AUTOMATION_NAMES, "unchanged"),
        CRASH_SILENT: "updated",
    }
    code, listed = cli("automations", "list", "--json")
    by_name = {a["name"]: a for a in listed["automations"]}
    assert set(by_name) == set(AUTOMATION_NAMES)
    assert {a["id"] for a in listed["automations"]} == set(ids.values())
    assert by_name[CRASH_SILENT]["trigger"]["within"] == 120.0
    assert [a["type"] for a in by_name[KEY_UNUSABLE]["actions"]] == ["do-nothing"]

    # Someone paused one, and two applies raced: apply puts it right again.
    with get_client(sync_client=True) as client:
        client.pause_automation(ids[KEY_UNUSABLE])
        options = AutomationOptions(crash_after_s=120)
        (twin,) = [a for a in keyrelay_automations(options) if a.name == KEY_UNUSABLE]
        client.create_automation(twin)
        theirs = client.create_automation(
            AutomationCore(
                name="not keyrelay's",
                trigger=EventTrigger(expect={"x.y"}, posture=Posture.Reactive, within=timedelta(0)),
                actions=[DoNothing()],
            )
        )
    code, mended = cli("automations", "apply", "--crash-after-s", "120", "--json")
    # which of the two it keeps (the paused one, re-enabled, or its twin) is the id order's
    assert _outcomes(mended)[KEY_UNUSABLE] in ("updated", "unchanged")
    code, listed = cli("automations", "list", "--json")
    assert sorted(a["name"] for a in listed["automations"]) == sorted(AUTOMATION_NAMES)
    assert all(a["enabled"] for a in listed["automations"])

    code, table = cli("automations", "list")
    assert code == 0 and "heartbeat" in table and "keyrelay.key_unusable" in table

    code, removed = cli("automations", "rm", KEY_UNUSABLE, "--json")
    assert [a["name"] for a in removed["removed"]] == [KEY_UNUSABLE]
    code, removed = cli("automations", "rm", "--json")
    assert len(removed["removed"]) == 3
    code, listed = cli("automations", "list", "--json")
    assert listed == {"automations": []}
    with get_client(sync_client=True) as client:
        assert client.read_automation(theirs) is not None  # rm touches only keyrelay's
        client.delete_automation(theirs)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["apply", "--crash-after-s", "40"], "crash_after_s must be at least 60"),
        (["apply", "--notify", "slack-webhook"], "give BLOCK-TYPE/NAME"),
        (["apply", "--notify", "slack-webhook/nobody"], "no slack-webhook block named 'nobody'"),
        (["rm", "nope"], "not a keyrelay automation: nope"),
    ],
)
def test_bad_input_is_one_error_line(cli: Any, args: list[str], error: str) -> None:
    code, output = cli("automations", *args)
    (line,) = output.strip().splitlines()
    assert code == 1 and line.startswith("error: ") and error in line


def test_refuses_to_run_without_a_prefect_server(tmp_path: Path) -> None:
    """Without PREFECT_API_URL Prefect would start a throwaway server and put them there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "automations", "apply"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: PREFECT_API_URL is not set")
