"""The keystore the CLI works on (KEYRELAY_* settings), and the hidden ways a secret comes in.

Imports of the keystore are deferred to the commands that need it: `keyrelay --help` and
`master-key generate` do not pay for SQLAlchemy and Alembic."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer

from api.cli.errors import CliInputError

if TYPE_CHECKING:
    from keystore import Keystore

__all__ = ["open_store", "read_secret"]


class SecretInputError(CliInputError):
    """No usable secret was given."""


def open_store() -> Keystore:
    from keystore import open_keystore

    return open_keystore()


def read_secret(prompt: str = "Secret") -> str:
    """The secret from stdin when it is piped in, else from a hidden prompt. Never from argv."""
    if sys.stdin is not None and not sys.stdin.isatty():
        secret = sys.stdin.read().strip()
        if not secret:
            raise SecretInputError("no secret on stdin (pipe it in, or run in a terminal)")
        return secret
    secret = str(typer.prompt(prompt, hide_input=True)).strip()
    if not secret:
        raise SecretInputError("empty secret")
    return secret
