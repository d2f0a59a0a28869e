"""Settings: the one place keyrelay reads its environment (KEYRELAY_*)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Validated at start. Secrets are SecretStr so they never print."""

    model_config = SettingsConfigDict(env_prefix="KEYRELAY_", extra="ignore", populate_by_name=True)

    home: Path = Field(default=Path("~/.keyrelay"), description="state directory")
    # Not under home: the agent works there, and the sandbox keeps home (the keystore, the
    # master key) out of its reach.
    runs_dir: Path = Field(
        default=Path("~/.local/share/keyrelay/runs"),
        description="where a claude-code run without a workdir gets its working directory",
    )
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite under home")
    master_key: SecretStr | None = Field(default=None, description="Fernet key(s), comma-separated")
    # A path instead of the key itself: the environment of a flow run ends up on disk (Prefect's
    # process worker writes it to a file per run, see README), a path there gives nothing away.
    master_key_file_path: Path | None = Field(
        default=None,
        validation_alias="KEYRELAY_MASTER_KEY_FILE",
        description="file holding the master key(s), one per line (0600; never created)",
    )
    sqlite_busy_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="longest wait for a SQLite keystore's write lock before a clear error",
    )
    api_token: SecretStr | None = Field(default=None, description="API bearer token(s)")
    api_rate_limit: str = Field(
        default="10/minute", description="per-client limit on API requests (valid token)"
    )
    # Unset: the same rate as api_rate_limit (10/minute by default), which keeps the number of
    # wrong-token requests a client gets answered with 401 what it was before they had their own
    # budget.
    api_auth_failure_limit: str | None = Field(
        default=None, description="per-client budget of failed authentications"
    )
    # Key bodies are a few hundred bytes; the cap bounds what an authenticated caller can make
    # the server read and parse, and the bounds stop a typo from disabling it.
    api_max_body_bytes: int = Field(
        default=1_048_576,
        ge=1_024,
        le=67_108_864,
        description="largest request body the API reads (bytes, 1 KiB to 64 MiB)",
    )

    @field_validator("home", "runs_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("master_key_file_path", mode="before")
    @classmethod
    def _blank_path_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("master_key_file_path")
    @classmethod
    def _expand_key_file(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("database_url", "api_auth_failure_limit")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or self.default_database_url

    @property
    def default_database_url(self) -> str:
        return f"sqlite:///{self.home / 'keystore.db'}"

    @property
    def master_key_file(self) -> Path:
        """KEYRELAY_MASTER_KEY_FILE, else `master.key` under KEYRELAY_HOME."""
        return self.master_key_file_path or self.home_master_key_file

    @property
    def home_master_key_file(self) -> Path:
        return self.home / "master.key"

    def keystore_traces(self, url: str) -> list[Path]:
        """Files besides its own that show a keystore existed at `url`: the home's master key
        file, for the keystore of that home (another URL may be a deliberately new keystore)."""
        return [self.home_master_key_file] if url == self.default_database_url else []

    @property
    def resolved_api_auth_failure_limit(self) -> str:
        return self.api_auth_failure_limit or self.api_rate_limit

    def api_tokens(self) -> list[str]:
        if self.api_token is None:
            return []
        return [t.strip() for t in self.api_token.get_secret_value().split(",") if t.strip()]
