"""keyrelay's alert automations fire on the Prefect server: a pool spent for longer than the
window (and not one that a resumed run showed was back), and a key taken out of the pool. The
action is a real notification block (a custom webhook to a receiver in this test, standing in for
Slack or email), and the server records the firing as `prefect.automation.action.triggered`.

The events come from keyrelay's own audit rows, through the audit hook every flow-run process
installs (flows/runtime.py), exactly as runs emit them."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock

from deployments.automations import KEY_UNUSABLE, POOL_EXHAUSTED, AutomationOptions
from flows.runtime import flow_keystore
from tests.flows.automation_support import automations_applied, related_id, server_events, wait_for
from tests.flows.support import FlowEnv, add_key

pytestmark = [pytest.mark.slow]
EXHAUSTED_FOR_S = 10.0  # Prefect's least window for a proactive trigger


class _Receiver(ThreadingHTTPServer):
    posts: list[dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    """What Slack would be: an HTTP endpoint the notification block posts to."""
    server = _Receiver(("127.0.0.1", 0), _Handler)
    server.posts = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_alerts_on_a_pool_spent_too_long_and_on_an_unusable_key(
    flow_env: FlowEnv, prefect_api: str, receiver: _Receiver
) -> None:
    port = receiver.server_address[1]
    block = CustomWebhookNotificationBlock(
        name="keyrelay alerts",
        url=f"http://127.0.0.1:{port}/alerts",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        allow_private_urls=True,
    )
    block_id = block.save("keyrelay-test-alerts", overwrite=True)
    since = datetime.now(UTC) - timedelta(seconds=1)
    store = flow_keystore()  # writes audit rows as a run would, each also a Prefect event
    key_id = add_key(flow_env, "bad")
    waiting, resumed = str(uuid.uuid4()), str(uuid.uuid4())
    options = AutomationOptions(exhausted_for_s=EXHAUSTED_FOR_S, notify_block_id=block_id)
    with automations_applied(options) as applied:
        ids = {a.name: a.id for a in applied}
        until = datetime.now(UTC) + timedelta(hours=2)
        store.record("pool_waiting", run_id=waiting, provider="anthropic", until=until)
        # openai's pool turns a run away too, but a run resumes: it was not spent for long
        store.record("pool_waiting", run_id=resumed, provider="openai", until=until)
        store.record("pool_resumed", run_id=resumed, provider="openai", lateness_s=0.2)
        store.mark_unusable(key_id, "rejected by the provider: invalid x-api-key", run_id=waiting)
        wait_for(lambda: len(receiver.posts) >= 2, EXHAUSTED_FOR_S + 40, "no alerts")
        time.sleep(6)  # one more proactive evaluation: the openai pool must stay quiet

    by_subject = {post["subject"]: post["body"] for post in receiver.posts}
    assert len(receiver.posts) == 2, receiver.posts
    key_alert = by_subject["keyrelay: a key is unusable"]
    assert f"keyrelay.key_unusable on keyrelay.key.{key_id}" in key_alert
    assert "invalid x-api-key" in key_alert
    pool_alert = by_subject[f"keyrelay: a pool has been spent for {EXHAUSTED_FOR_S / 60:g} min"]
    assert "keyrelay.pool_waiting on keyrelay.pool.anthropic" in pool_alert
    assert "openai" not in pool_alert

    # The server's record of each firing points at the event that caused it.
    (turned_away,) = server_events(
        prefect_api, "keyrelay.pool_waiting", since=since, resource_prefix="keyrelay.pool.anthropic"
    )
    (unusable,) = server_events(prefect_api, "keyrelay.key_unusable", since=since)
    fired = wait_for(
        lambda: server_events(prefect_api, "prefect.automation.action.triggered", since=since),
        10,
        "no action.triggered events",
    )
    causes = {
        event["resource"]["prefect.resource.id"]: related_id(event, "triggering-event")
        for event in fired
    }
    assert causes == {
        f"prefect.automation.{ids[POOL_EXHAUSTED]}": f"prefect.event.{turned_away['id']}",
        f"prefect.automation.{ids[KEY_UNUSABLE]}": f"prefect.event.{unusable['id']}",
    }
    # proactive: it fired only once the pool had been spent for the whole window
    pool_fired = next(
        e for e in fired if str(ids[POOL_EXHAUSTED]) in e["resource"]["prefect.resource.id"]
    )
    spent_for = datetime.fromisoformat(pool_fired["occurred"]) - datetime.fromisoformat(
        turned_away["occurred"]
    )
    assert spent_for >= timedelta(seconds=EXHAUSTED_FOR_S)
