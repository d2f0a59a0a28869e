"""Turn any failure into one `error: ...` line (never a traceback).

The keystore and pydantic are looked up in `sys.modules` instead of imported: when they were never
loaded, none of their errors can have been raised, and `keyrelay --help` stays fast."""

from __future__ import annotations

import sys

try:  # typer >= 0.25 vendors click as typer._click; older typer raises click's own exceptions
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    from typer.exceptions import Abort
except ImportError:  # pragma: no cover
    from click.exceptions import (  # type: ignore[assignment]
        Abort,
        ClickException,
        NoArgsIsHelpError,
        UsageError,
    )

__all__ = ["CliInputError", "describe"]


class CliInputError(ValueError):
    """An argument or input the CLI itself cannot use; the message says what is expected."""


def describe(exc: BaseException) -> tuple[str, int]:
    """The line to print and the exit code."""
    if isinstance(exc, NoArgsIsHelpError):
        return exc.format_message(), 2  # the help text, as `keyrelay` alone should print
    if isinstance(exc, UsageError):
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        return f"error: {exc.format_message()}{hint}", exc.exit_code
    if isinstance(exc, ClickException):
        return f"error: {exc.format_message()}", exc.exit_code
    if isinstance(exc, Abort):
        return "error: aborted", 1
    keystore_errors = sys.modules.get("keystore.errors")
    if keystore_errors is not None and isinstance(exc, keystore_errors.KeyrelayError):
        return f"error: {exc}", 1  # keyrelay's messages never hold a secret
    pydantic_core = sys.modules.get("pydantic_core")
    if pydantic_core is not None and isinstance(exc, pydantic_core.ValidationError):
        # Name the field and the rule, never the input (it may be a secret).
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()
        )
        return f"error: invalid {exc.title}: {problems}", 1
    if isinstance(exc, CliInputError | OSError | ImportError):
        return f"error: {exc}", 1
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.DBAPIError):
        # The driver's own message (e.g. "connection refused"), not the statement's parameters.
        first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
        return f"error: database: {first or type(exc.orig).__name__}", 1
    return f"error: unexpected {type(exc).__name__}", 1
