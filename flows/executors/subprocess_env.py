"""The environment of a `claude` child process: a small allow-list of the parent's, the turn's
private HOME and config dir, keyrelay's fixed settings, and the key, which exists nowhere else.

The parent's `os.environ` is only read, never written: the secret goes into the dict built here
and from there into the child (`execve`), so no other thread or child of the parent can see it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from keystore.errors import InvalidInput

__all__ = [
    "CREDENTIAL_VARS",
    "INHERITED_VARS",
    "SETTINGS",
    "check_extra_env",
    "child_env",
    "credential_var",
]

# Taken from the parent when set: locale, time zone, proxies and CA bundles (the child must reach
# the provider the way the parent does), and the standard base-URL variable.
INHERITED_VARS = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "ANTHROPIC_BASE_URL",
)
# Every variable the CLI reads a credential from. Only one is ever set (both set: the API key
# wins, CLAUDE_CLI_NOTES.md), and never from the parent.
CREDENTIAL_VARS = ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN")
SETTINGS = {
    "CLAUDE_CODE_MAX_RETRIES": "0",  # a 429 ends the turn at once; keyrelay rotates
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
_RESERVED = frozenset({*CREDENTIAL_VARS, *SETTINGS, "HOME", "CLAUDE_CONFIG_DIR", "TMPDIR"})
_OAUTH_PREFIX = "sk-ant-oat"


def credential_var(secret: str) -> str:
    """Subscription (OAuth) tokens go in CLAUDE_CODE_OAUTH_TOKEN, anything else is an API key."""
    return "CLAUDE_CODE_OAUTH_TOKEN" if secret.startswith(_OAUTH_PREFIX) else "ANTHROPIC_API_KEY"


def check_extra_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Options may add variables, but not credentials nor anything keyrelay sets itself."""
    refused = sorted(name for name in extra if name in _RESERVED)
    if refused:
        raise InvalidInput(f"extra_env: keyrelay sets {', '.join(refused)} itself")
    bad = sorted(n for n, v in extra.items() if not isinstance(v, str) or not isinstance(n, str))
    if bad:
        raise InvalidInput(f"extra_env: values must be strings ({', '.join(map(str, bad))})")
    return dict(extra)


def child_env(
    *,
    secret: str,
    home: Path,
    config_dir: Path,
    tmp_dir: Path,
    base_url: str | None = None,
    extra: Mapping[str, str] | None = None,
    parent: Mapping[str, str] | None = None,
) -> dict[str, str]:
    parent = os.environ if parent is None else parent
    env = {name: parent[name] for name in INHERITED_VARS if parent.get(name)}
    env.setdefault("PATH", os.defpath)
    if base_url:
        env["ANTHROPIC_BASE_URL"] = base_url
    env.update(check_extra_env(extra or {}))
    env.update(SETTINGS)
    env["HOME"] = str(home)
    env["CLAUDE_CONFIG_DIR"] = str(config_dir)
    env["TMPDIR"] = str(tmp_dir)
    env[credential_var(secret)] = secret
    return env
