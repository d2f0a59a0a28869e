"""The REAL `claude` CLI through the per-turn relay, with the emulator as the provider: the CLI
holds only the placeholder, and everything it asks of the provider goes through the relay.

In every turn the emulator's agent has the CLI run, as a Bash tool call, `env` and its parent's
(the CLI's) `/proc/$PPID/environ`: both must show the placeholder and never the key. These re-check
CLAUDE_CLI_NOTES.md, "Through a relay". They need the CLI and fail, never skip, without it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from api.emulator import AgentScript, LimitRule, RunningEmulator, ToolStep, fingerprint
from flows.executors.base import ProviderResponse
from flows.executors.relay import Gate, Relay, RelayStats, key_kind
from flows.executors.subprocess_env import SETTINGS, child_env
from keystore import RateLimitSignal
from keystore.ratelimits import parse_claude_code_output, parse_rate_limit
from tests.executors.helpers import api_key, oauth_token

pytest_plugins = ["tests.emulator.fixtures", "tests.executors.fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.anyio]

API_KEY = api_key("relay-cli")
OAUTH = oauth_token("relay-cli")
KINDS = pytest.mark.parametrize("secret", [API_KEY, OAUTH], ids=["api_key", "oauth"])
ALLOW_BASH = ("--allowedTools", "Bash")
PROC_MARK = "==proc=="
# `env` shows what a tool inherits; the CLI's own environment is its parent's /proc entry.
PROBE = ToolStep.bash(
    f"env; echo {PROC_MARK}; tr '\\0' '\\n' < /proc/$PPID/environ",
    description="Show the environment",
)
APPEND = ToolStep.bash("echo step{step} >> log.txt", description="Append step {step}")


@dataclass
class RelayedTurn:
    returncode: int
    events: list[dict[str, Any]]
    stdout: str
    stderr: str
    stats: RelayStats
    heard: list[ProviderResponse]
    placeholder: str
    port: int
    last_refusal: RateLimitSignal | None

    @property
    def result(self) -> dict[str, Any]:
        (result,) = [e for e in self.events if e["type"] == "result"]
        return result

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def tool_outputs(self) -> list[str]:
        return [
            str(e["tool_use_result"].get("stdout", ""))
            for e in self.of_type("user")
            if isinstance(e.get("tool_use_result"), dict)
        ]


async def run_through_relay(
    claude_bin: Path,
    upstream: str,
    *args: str,
    secret: str,
    home: Path,
    cwd: Path,
    gate: Gate | None = None,
    parent: Mapping[str, str] | None = None,
    quiet: bool = True,
    drop: tuple[str, ...] = (),
) -> RelayedTurn:
    """One `claude -p` turn whose provider is a relay in front of `upstream`, the environment built
    the way the executor builds it (subprocess_env.child_env) plus the relay's `child_env()`.
    `parent`: the worker's environment the child inherits from; `quiet=False` leaves out the
    settings that switch the CLI's non-essential traffic off; `drop`: variables to remove."""
    heard: list[ProviderResponse] = []

    async def report(answer: ProviderResponse) -> None:
        heard.append(answer)

    for folder in (home / ".claude", home / "tmp"):
        folder.mkdir(parents=True, exist_ok=True)
    async with Relay(secret=secret, upstream=upstream, report=report, gate=gate) as relay:
        env = child_env(
            secret=relay.placeholder,
            home=home,
            config_dir=home / ".claude",
            tmp_dir=home / "tmp",
            parent={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(parent or {})},
        )
        env.update(relay.child_env())
        if not quiet:
            for name in SETTINGS:
                if name != "CLAUDE_CODE_MAX_RETRIES":
                    del env[name]
        for name in drop:
            env.pop(name, None)
        process = await asyncio.create_subprocess_exec(
            str(claude_bin),
            "-p",
            *args,
            "--output-format",
            "stream-json",
            "--verbose",
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        placeholder, port = relay.placeholder, relay.port
    assert port is not None and process.returncode is not None
    stdout = out.decode()
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return RelayedTurn(
        returncode=process.returncode,
        events=events,
        stdout=stdout,
        stderr=err.decode(),
        stats=relay.stats,
        heard=heard,
        placeholder=placeholder,
        port=port,
        last_refusal=relay.last_refusal,
    )


def assert_only_the_placeholder(turn: RelayedTurn, *, secret: str, home: Path) -> None:
    """The probe ran and saw the placeholder; the key is nowhere the agent or its files reach."""
    probes = [out for out in turn.tool_outputs() if PROC_MARK in out]
    assert probes, f"the probe did not run: {turn.tool_outputs()}"
    for output in probes:
        tool_env, _, cli_env = output.partition(PROC_MARK)
        assert f"ANTHROPIC_BASE_URL=http://127.0.0.1:{turn.port}" in tool_env
        variable = (
            "ANTHROPIC_API_KEY" if key_kind(secret) == "api_key" else "CLAUDE_CODE_OAUTH_TOKEN"
        )
        assert f"{variable}={turn.placeholder}" in cli_env.splitlines()
        assert secret not in output
    assert secret not in turn.stdout and secret not in turn.stderr
    for path in home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def assert_the_real_key_went_upstream(emu: RunningEmulator, turn: RelayedTurn, secret: str) -> None:
    log = emu.admin.log()
    assert log and {(e.key_fingerprint, e.credential_kind) for e in log} == {
        (fingerprint(secret), key_kind(secret))
    }
    assert emu.admin.key(api_key=turn.placeholder).requests == 0
    assert turn.stats.forwarded == len(log) == len(turn.heard)
    assert [a.status for a in turn.heard] == [e.status for e in log]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


# -- turns ----------------------------------------------------------------------------------------


@KINDS
async def test_a_turn_runs_through_the_relay_and_the_cli_holds_only_the_placeholder(
    claude_bin: Path, live_emu: RunningEmulator, tmp_path: Path, workdir: Path, secret: str
) -> None:
    live_emu.admin.set_agent(AgentScript(steps=[PROBE]))
    turn = await run_through_relay(
        claude_bin,
        live_emu.base_url,
        "go",
        *ALLOW_BASH,
        secret=secret,
        home=tmp_path / "h",
        cwd=workdir,
    )
    assert turn.returncode == 0, turn.stderr
    assert (turn.result["is_error"], turn.result["result"]) == (False, "Done: 1 tool steps.")
    assert_the_real_key_went_upstream(live_emu, turn, secret)
    assert_only_the_placeholder(turn, secret=secret, home=tmp_path / "h")
    assert (turn.stats.refused, turn.stats.local_refusals) == (0, 0)
    if key_kind(secret) == "api_key":
        # With an API key the CLI passes ANTHROPIC_API_KEY on to its tools; the placeholder is
        # all they get. (With an OAuth token it passes no credential to them at all.)
        assert f"ANTHROPIC_API_KEY={turn.placeholder}" in turn.tool_outputs()[0]


@KINDS
async def test_a_tool_loop_runs_through_the_relay(
    claude_bin: Path, live_emu: RunningEmulator, tmp_path: Path, workdir: Path, secret: str
) -> None:
    live_emu.admin.set_agent(AgentScript(steps=[PROBE, APPEND]))
    turn = await run_through_relay(
        claude_bin,
        live_emu.base_url,
        "go",
        *ALLOW_BASH,
        secret=secret,
        home=tmp_path / "h",
        cwd=workdir,
    )
    assert turn.returncode == 0, turn.stderr
    assert turn.result["result"] == "Done: 2 tool steps."
    assert (workdir / "log.txt").read_text() == "step2\n"
    log = live_emu.admin.log()
    assert [(e.status, e.stream, e.tool_results, e.tool_step) for e in log] == [
        (200, True, 0, 1),
        (200, True, 1, 2),
        (200, True, 2, None),
    ]
    assert_the_real_key_went_upstream(live_emu, turn, secret)
    assert_only_the_placeholder(turn, secret=secret, home=tmp_path / "h")


# -- limits ---------------------------------------------------------------------------------------


@KINDS
async def test_a_provider_429_mid_turn_reaches_report_with_its_reset(
    claude_bin: Path, live_emu: RunningEmulator, tmp_path: Path, workdir: Path, secret: str
) -> None:
    """API key: the CLI's own output names no reset (CLAUDE_CLI_NOTES.md), the report has it.
    OAuth: the `rejected` unified 429, which the CLI reports as a usage limit."""
    live_emu.admin.set_agent(AgentScript(steps=[PROBE, APPEND, APPEND]))
    live_emu.admin.set_limits([LimitRule(key=secret, requests=2, window_s=600)])
    begun = datetime.now(UTC)
    turn = await run_through_relay(
        claude_bin,
        live_emu.base_url,
        "go",
        *ALLOW_BASH,
        secret=secret,
        home=tmp_path / "h",
        cwd=workdir,
    )
    assert turn.returncode == 1
    assert (turn.result["is_error"], turn.result["api_error_status"]) == (True, 429)
    assert [a.status for a in turn.heard] == [200, 200, 429]
    assert (turn.stats.provider_429s, turn.stats.local_refusals) == (1, 0)
    refusal = turn.heard[2]
    signal = parse_rate_limit(
        "claude-code",
        status=refusal.status,
        headers=refusal.headers,
        body=refusal.body,
        received_at=refusal.received_at,
    )
    assert signal is not None and signal.resets_at is not None
    assert begun + timedelta(seconds=595) < signal.resets_at < begun + timedelta(seconds=610)
    if key_kind(secret) == "api_key":
        assert refusal.headers["retry-after"] in {str(s) for s in range(595, 601)}
        assert signal.kind == "rate_limit"
        assert turn.result["result"].startswith("API Error: Request rejected (429)")
        assert not turn.of_type("rate_limit_event")
    else:
        assert refusal.headers["anthropic-ratelimit-unified-status"] == "rejected"
        assert signal.kind == "usage_limit"
        (event,) = [
            e
            for e in turn.of_type("rate_limit_event")
            if e["rate_limit_info"]["status"] != "allowed"
        ]
        assert event["rate_limit_info"]["resetsAt"] == int(
            refusal.headers["anthropic-ratelimit-unified-reset"]
        )
        assert turn.result["result"].startswith("You've hit your 5-hour limit · resets")
    assert_the_real_key_went_upstream(live_emu, turn, secret)
    assert_only_the_placeholder(turn, secret=secret, home=tmp_path / "h")


@KINDS
async def test_a_gate_refusal_mid_turn_ends_the_turn_with_a_429_and_no_provider_call(
    claude_bin: Path, live_emu: RunningEmulator, tmp_path: Path, workdir: Path, secret: str
) -> None:
    live_emu.admin.set_agent(AgentScript(steps=[PROBE, APPEND]))
    resets_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1, seconds=0.5)
    kind = key_kind(secret)
    refusing = RateLimitSignal(
        kind="usage_limit" if kind == "oauth" else "rate_limit",
        resets_at=resets_at,
        retryable=True,
        source="keystore",
    )
    asked: list[int] = []

    async def gate() -> RateLimitSignal | None:
        asked.append(1)
        return None if len(asked) == 1 else refusing

    turn = await run_through_relay(
        claude_bin,
        live_emu.base_url,
        "go",
        *ALLOW_BASH,
        secret=secret,
        home=tmp_path / "h",
        cwd=workdir,
        gate=gate,
    )
    assert turn.returncode == 1
    assert (turn.result["is_error"], turn.result["api_error_status"]) == (True, 429)
    assert len(asked) == 2 and len(live_emu.admin.log()) == 1
    assert (turn.stats.local_refusals, turn.stats.provider_429s) == (1, 0)
    assert turn.last_refusal is refusing
    assert not (workdir / "log.txt").exists()  # step 2 was never asked for
    if kind == "api_key":
        assert "No request was sent to the provider" in turn.result["result"]
    else:
        assert turn.result["result"].startswith("You've hit your 5-hour limit · resets")
        (event,) = [
            e
            for e in turn.of_type("rate_limit_event")
            if e["rate_limit_info"]["status"] != "allowed"
        ]
        assert event["rate_limit_info"]["resetsAt"] == math.ceil(resets_at.timestamp())
        # The executor's own reading of the CLI's output agrees with the gate.
        read = parse_claude_code_output(turn.events, received_at=datetime.now(UTC))
        assert read is not None and read.kind == "usage_limit"
        assert read.resets_at == resets_at.replace(microsecond=0) + timedelta(seconds=1)
    assert_the_real_key_went_upstream(live_emu, turn, secret)
    assert_only_the_placeholder(turn, secret=secret, home=tmp_path / "h")


async def test_an_unreachable_provider_ends_the_turn_with_a_502(
    claude_bin: Path, tmp_path: Path, workdir: Path
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        upstream = f"http://127.0.0.1:{closed.getsockname()[1]}"
    turn = await run_through_relay(
        claude_bin, upstream, "hello", secret=API_KEY, home=tmp_path / "h", cwd=workdir
    )
    assert turn.returncode == 1
    assert (turn.result["is_error"], turn.result["api_error_status"]) == (True, 502)
    assert "the provider could not be reached" in turn.result["result"]
    assert (turn.stats.forwarded, turn.stats.upstream_failures, turn.heard) == (1, 1, [])


# -- what else the CLI contacts -------------------------------------------------------------------


@dataclass
class RecordingProxy:
    """An HTTP(S) proxy that forwards nothing: it records each request's first line and answers
    403. With `tls`, it accepts a CONNECT and reads the request inside the tunnel (the CLI trusts
    the test CA through NODE_EXTRA_CA_CERTS), recording its request line and credential headers."""

    tls: ssl.SSLContext | None = None
    seen: list[str] = field(default_factory=list)
    tunnelled: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            line = head.split(b"\r\n", 1)[0].decode(errors="replace")
            self.seen.append(line)
            if line.startswith("CONNECT ") and self.tls is not None:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await writer.start_tls(self.tls)
                inner = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                request_line, *header_lines = inner.decode(errors="replace").split("\r\n")
                headers = dict(
                    (name.strip().lower(), value.strip())
                    for name, _, value in (h.partition(":") for h in header_lines if ":" in h)
                )
                credentials = {
                    k: v for k, v in headers.items() if k in ("x-api-key", "authorization")
                }
                self.tunnelled.append((request_line, credentials))
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, ssl.SSLContext]]:
    """A throw-away CA (its certificate file, for NODE_EXTRA_CA_CERTS) and a server context for
    api.anthropic.com signed by it."""
    folder = tmp_path_factory.mktemp("ca")
    now = dt.datetime.now(UTC)
    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyrelay test CA")])

    def certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=2))
        )

    ca = (
        certificate(ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api.anthropic.com")])
    leaf = (
        certificate(leaf_name, leaf_key)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("api.anthropic.com")]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (folder / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "leaf.pem", folder / "leaf.key")
    yield folder / "ca.pem", context


async def with_proxy(proxy: RecordingProxy) -> tuple[asyncio.Server, dict[str, str]]:
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    names = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
    return server, dict.fromkeys(names, url)


@KINDS
async def test_with_its_quiet_settings_the_cli_contacts_nothing_but_the_relay(
    claude_bin: Path, live_emu: RunningEmulator, tmp_path: Path, workdir: Path, secret: str
) -> None:
    """The worker's proxy variables reach the CLI (subprocess_env passes them on): a connection
    that bypassed ANTHROPIC_BASE_URL would show up at the proxy. None does."""
    live_emu.admin.set_agent(AgentScript(steps=[PROBE, APPEND]))
    proxy = RecordingProxy()
    server, proxy_env = await with_proxy(proxy)
    async with server:
        turn = await run_through_relay(
            claude_bin,
            live_emu.base_url,
            "go",
            *ALLOW_BASH,
            secret=secret,
            home=tmp_path / "h",
            cwd=workdir,
            parent=proxy_env,
        )
        await asyncio.sleep(0.5)  # anything the CLI left in flight
    assert turn.returncode == 0, turn.stderr
    assert proxy.seen == []
    assert_the_real_key_went_upstream(live_emu, turn, secret)
    assert_only_the_placeholder(turn, secret=secret, home=tmp_path / "h")


@KINDS
async def test_without_its_quiet_settings_the_cli_goes_around_the_relay_with_the_placeholder(
    claude_bin: Path,
    live_emu: RunningEmulator,
    tmp_path: Path,
    workdir: Path,
    secret: str,
    test_ca: tuple[Path, ssl.SSLContext],
) -> None:
    """The control for the test above: the CLI does honour HTTPS_PROXY, and with non-essential
    traffic allowed it calls api.anthropic.com itself, ANTHROPIC_BASE_URL or not. What it sends
    there carries the placeholder only."""
    ca_file, tls = test_ca
    proxy = RecordingProxy(tls=tls)
    server, proxy_env = await with_proxy(proxy)
    async with server:
        turn = await run_through_relay(
            claude_bin,
            live_emu.base_url,
            "hello",
            secret=secret,
            home=tmp_path / "h",
            cwd=workdir,
            parent=proxy_env | {"NODE_EXTRA_CA_CERTS": str(ca_file)},
            quiet=False,
        )
        await asyncio.sleep(0.5)
    assert turn.returncode == 0, turn.stderr
    assert proxy.seen and set(proxy.seen) == {"CONNECT api.anthropic.com:443 HTTP/1.1"}
    paths = {line.split(" ")[1].split("?")[0] for line, _ in proxy.tunnelled}
    assert "/api/event_logging/v2/batch" in paths and "/api/claude_cli/bootstrap" in paths
    credentials = {value for _, sent in proxy.tunnelled for value in sent.values()}
    assert credentials and credentials <= {turn.placeholder, f"Bearer {turn.placeholder}"}
    assert turn.stats.forwarded == len(live_emu.admin.log()) == 1


async def test_without_no_proxy_the_cli_sends_even_a_loopback_base_url_to_the_proxy(
    claude_bin: Path, live_emu: RunningEmulator, tmp_path: Path, workdir: Path
) -> None:
    """Why the relay's child_env() sets NO_PROXY: without it the turn goes to the proxy."""
    proxy = RecordingProxy()
    server, proxy_env = await with_proxy(proxy)
    async with server:
        turn = await run_through_relay(
            claude_bin,
            live_emu.base_url,
            "hello",
            secret=API_KEY,
            home=tmp_path / "h",
            cwd=workdir,
            parent=proxy_env,
            drop=("NO_PROXY", "no_proxy"),
        )
    assert turn.returncode == 1
    assert proxy.seen == [f"POST http://127.0.0.1:{turn.port}/v1/messages?beta=true HTTP/1.1"]
    assert turn.stats.requests == 0 and live_emu.admin.log() == []
