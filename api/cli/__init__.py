"""The `keyrelay` command line (typer + rich). It works on the keystore directly (KEYRELAY_*
settings), not through the HTTP API.

Commands live in small modules, each a typer sub-app (`keys`, `config`, `audit`, `master-key`,
`db`, `automations`) or top-level commands added by a `register(app)` function (`servers`). A new
module (e.g. `runs.py` for serve/run/demo) registers itself below the same way. Nothing here
imports Prefect at import time (commands that talk to it import it when they run).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from api.cli import admin, audit, automations, config, demo, keys, runs, servers
from api.cli.errors import describe

__all__ = ["app", "main"]

app = typer.Typer(
    name="keyrelay",
    help="Run LLM agent jobs on leased provider keys: manage keys, rotation and the audit log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(keys.app, name="keys")
app.add_typer(config.app, name="config")
app.add_typer(audit.app, name="audit")
app.add_typer(admin.master_key_app, name="master-key")
app.add_typer(admin.db_app, name="db")
app.add_typer(automations.app, name="automations")
servers.register(app)
runs.register(app)
demo.register(app)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code. Every failure is one line on stderr."""
    command = typer.main.get_command(app)
    try:
        result = command.main(
            args=list(argv) if argv is not None else None,
            prog_name="keyrelay",
            standalone_mode=False,
        )
    except Exception as exc:
        line, code = describe(exc)
        print(line, file=sys.stderr)
        return code
    return result if isinstance(result, int) else 0
