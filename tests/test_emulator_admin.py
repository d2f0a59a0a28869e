"""Admin endpoints: counters and windows computed from what was served, the log, runtime
changes, secrecy of keys, and the `python -m api.emulator` entry point."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from api.emulator import FaultRule, LimitRule, RunningEmulator, fingerprint

pytest_plugins = ["tests.emulator.fixtures"]

HELLO = [{"role": "user", "content": "hello"}]


def call(base_url: str, key: str) -> int:
    with anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0) as client:
        try:
            client.messages.create(model="m", max_tokens=64, messages=HELLO)
            return 200
        except anthropic.APIStatusError as exc:
            return exc.status_code


def test_concurrent_bursts_in_real_time_never_overfill_a_window(
    live_emulator: RunningEmulator,
) -> None:
    admin = live_emulator.admin
    admin.reset(restore_config=True)
    admin.set_limits(
        [
            LimitRule(key_prefix="sk-fixed-", requests=3, window_s=0.5),
            LimitRule(key_prefix="sk-slide-", requests=3, window_s=0.5, window="sliding"),
        ]
    )
    keys = ["sk-fixed-aaaaaaaaaaaaaaaa", "sk-slide-bbbbbbbbbbbbbbbb"]
    deadline = time.monotonic() + 1.2

    def hammer(key: str) -> list[int]:
        statuses = []
        while time.monotonic() < deadline:
            statuses.append(call(live_emulator.base_url, key))
        return statuses

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(hammer, keys * 3))
    for key in keys:
        statuses = [s for r, k in zip(results, keys * 3, strict=True) if k == key for s in r]
        counters = admin.key(api_key=key)
        assert counters.served == statuses.count(200) and counters.rate_limited == statuses.count(
            429
        )
        assert (
            set(statuses) == {200, 429} and len(counters.rate_limited_at) == counters.rate_limited
        )
        report = admin.bucket(f"key:{fingerprint(key)}")
        assert report.served_over_limit == 0
        assert report.max_requests_in_window == 3  # full windows, never more
        assert all(w.requests <= 3 for w in report.windows)
        assert sum(1 for w in report.windows if w.requests == 3) >= 2


def test_the_log_names_keys_by_fingerprint_and_describes_each_request(emu: RunningEmulator) -> None:
    key = "sk-ant-api03-logged-0123456789abcdefghij"
    emu.admin.set_faults([FaultRule(kind="overloaded", times=1)])
    assert call(emu.base_url, key) == 529
    assert call(emu.base_url, key) == 200
    first, second = emu.admin.log()
    assert (first.status, first.fault, second.status, second.fault) == (
        529,
        "overloaded",
        200,
        None,
    )
    assert second.key_fingerprint == fingerprint(key) and second.key_masked == "sk-ant-...ghij"
    assert (second.model, second.messages, second.user_turns, second.stream) == ("m", 1, 1, False)
    assert second.path == "/v1/messages" and second.provider == "anthropic"
    assert emu.admin.log(limit=1) == [second]


def test_no_admin_output_ever_contains_a_full_key(emu: RunningEmulator) -> None:
    secrets = [
        "sk-ant-api03-very-secret-AAAAAAAAAAAAAAAA",
        "sk-ant-oat01-very-secret-BBBBBBBBBBBBBB",
    ]
    emu.admin.set_limits([LimitRule(key=secrets[0], requests=1, window_s=60)])
    emu.admin.set_faults([FaultRule(key=secrets[1], kind="junk_headers")])
    for secret in secrets * 2:
        call(emu.base_url, secret)
    with (
        openai.OpenAI(base_url=emu.openai_base_url, api_key=secrets[0], max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        client.chat.completions.create(model="g", messages=HELLO)
    pages = [
        httpx.get(f"{emu.base_url}/_admin/{p}").text
        for p in ("state", "keys", "buckets", "log", "config")
    ]
    pages.append(str(caught.value.response.text))
    for secret in secrets:
        assert not [p for p in pages if secret in p or secret[:-4] in p]
    assert fingerprint(secrets[0]) in pages[4]  # the config names the key by fingerprint


def test_runtime_limits_faults_and_reset_over_http(emu: RunningEmulator) -> None:
    key = "sk-ant-api03-runtime-0123456789abcdef"
    assert call(emu.base_url, key) == 200
    emu.admin.set_limits([LimitRule(key_prefix="sk-ant-api03-runtime", requests=1, window_s=60)])
    assert [call(emu.base_url, key), call(emu.base_url, key)] == [200, 429]
    assert emu.admin.config()["limits"][0]["requests"] == 1
    emu.admin.reset()
    assert emu.admin.key(api_key=key).requests == 0 and emu.admin.buckets() == []
    assert [call(emu.base_url, key), call(emu.base_url, key)] == [200, 429]  # limits kept
    emu.admin.reset(restore_config=True)
    assert emu.admin.config()["limits"] == []
    with pytest.raises(LookupError):
        emu.admin.bucket("key:0000000000000000")


def test_admin_rejects_unknown_fields(emu: RunningEmulator) -> None:
    response = httpx.post(f"{emu.base_url}/_admin/limits", json={"limits": [{"requestz": 1}]})
    assert response.status_code == 422
    response = httpx.post(f"{emu.base_url}/_admin/faults", json={"faults": [{"kind": "boom"}]})
    assert response.status_code == 422


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_python_dash_m_serves_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "emulator.json"
    config.write_text(json.dumps({"limits": [{"key_prefix": "sk-", "requests": 7, "window_s": 2}]}))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "api.emulator", "--port", str(port), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/_admin/config")
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the emulator did not start"
                time.sleep(0.1)
        assert response.json()["limits"][0]["requests"] == 7
        assert call(f"http://127.0.0.1:{port}", "sk-cli-entry-point-0000000000") == 200
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_reply_delay_makes_concurrent_calls_overlap(live_emulator: RunningEmulator) -> None:
    admin = live_emulator.admin
    admin.reset(restore_config=True)
    admin.set_reply_delay(0.3)
    try:
        with ThreadPoolExecutor(3) as pool:
            statuses = list(
                pool.map(
                    lambda k: call(live_emulator.base_url, k),
                    [f"sk-delay-{i}-aaaaaaaaaaaa" for i in range(3)],
                )
            )
    finally:
        admin.set_reply_delay(0)
    assert statuses == [200, 200, 200]
    entries = admin.log()
    assert len(entries) == 3
    for entry in entries:
        assert entry.answered_at is not None and entry.answered_at - entry.at >= 0.3
    # all three were in flight at once: each arrived before any was answered
    assert max(e.at for e in entries) < min(e.answered_at or 0 for e in entries)
