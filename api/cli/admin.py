"""`keyrelay master-key ...` and `keyrelay db ...`: operating the keystore itself."""

from __future__ import annotations

import typer

from api.cli.output import console
from api.cli.store import open_store

master_key_app = typer.Typer(help="Generate and rotate the master key.", no_args_is_help=True)
db_app = typer.Typer(help="The keystore database.", no_args_is_help=True)


@master_key_app.command("generate")
def generate_master_key() -> None:
    """Print a new Fernet key for KEYRELAY_MASTER_KEY (nothing is stored)."""
    from cryptography.fernet import Fernet

    typer.echo(Fernet.generate_key().decode())


@master_key_app.command("rotate")
def rotate_master_key() -> None:
    """Re-encrypt every secret under the first master key. With a key file under KEYRELAY_HOME a
    new key is put first; with KEYRELAY_MASTER_KEY, put the new key first there (keep the old
    ones after it) before running this."""
    count = open_store().rotate_master_key()
    console.print(f"re-encrypted {count} key(s) under the first master key")


@db_app.command("upgrade")
def upgrade_database() -> None:
    """Bring the keystore schema to the latest revision (safe to run while others use it)."""
    from sqlalchemy.engine import make_url

    from keystore import Settings
    from keystore.opening import upgrade_database as upgrade

    settings = Settings()
    url = settings.resolved_database_url
    revision = upgrade(
        url, traces=settings.keystore_traces(url), busy_timeout_s=settings.sqlite_busy_timeout_s
    )
    console.print(f"{make_url(url).render_as_string(hide_password=True)} is at revision {revision}")


@db_app.command("init")
def init_database() -> None:
    """Create a new, empty keystore where there is none. Other commands create the first one
    by themselves, but never a replacement for one that went missing: this does, on purpose."""
    from sqlalchemy.engine import make_url

    from keystore import Settings
    from keystore.opening import init_database as init

    settings = Settings()
    url = settings.resolved_database_url
    revision = init(url, busy_timeout_s=settings.sqlite_busy_timeout_s)
    shown = make_url(url).render_as_string(hide_password=True)
    console.print(f"created a new, empty keystore at {shown} (revision {revision})")
