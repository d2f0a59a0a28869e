"""RotationConfig: how the pool behaves when keys run out. Stored in the keystore database so the
CLI, the API and every worker read the same values. Unknown fields are rejected."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, select

from keystore.clock import utcnow
from keystore.errors import ConfigError
from keystore.models import ConfigRow, Provider

__all__ = ["RotationConfig", "load_config", "save_config", "updated_config"]

_WEEK_S = 7 * 24 * 3600


class RotationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)

    auto_wait: bool = Field(
        True, description="defer the run to the earliest reset when all keys are spent"
    )
    max_wait_s: float = Field(
        28800, ge=0, le=4 * _WEEK_S, description="longest deferral before failing"
    )
    inline_wait_max_s: float = Field(
        30, ge=0, le=3600, description="wait in-process up to this long"
    )
    fallback_enabled: bool = Field(
        False, description="use fallback_provider when the primary is spent"
    )
    fallback_provider: Provider = Field("openai", description="provider used while falling back")
    lease_ttl_s: float = Field(
        300, ge=5, le=86400, description="lease lifetime; holders renew at 1/3"
    )
    no_reset_cooldown_s: float = Field(
        60, ge=1, le=86400, description="cooldown when no reset is given"
    )
    proactive_threshold: float = Field(
        0.95, gt=0, le=1, description="keys whose utilization reaches this are chosen last"
    )
    resume_stagger_s: float = Field(
        1.0, ge=0, le=3600, description="spacing of deferred runs resuming on the same reset"
    )
    sandbox: Literal["required", "auto", "off"] = Field(
        "auto",
        description="run the claude CLI in a bubblewrap sandbox: required (refuse without one), "
        "auto (when available, else warn), off",
    )
    workdir_snapshot_max_mb: float = Field(
        64, ge=0, le=4096, description="largest default working directory a deferral keeps"
    )


def updated_config(config: RotationConfig, changes: dict[str, Any]) -> RotationConfig:
    """A validated copy with `changes` applied; ConfigError names the bad field."""
    unknown = sorted(set(changes) - set(RotationConfig.model_fields))
    if unknown:
        known = ", ".join(RotationConfig.model_fields)
        raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; known: {known}")
    try:
        return RotationConfig.model_validate({**config.model_dump(), **changes})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"{field}: {first['msg']}") from None


def load_config(conn: Connection) -> RotationConfig:
    table = ConfigRow.__table__  # type: ignore[attr-defined]
    data = conn.execute(select(table.c.data).where(table.c.id == 1)).scalar_one_or_none()
    if not data:
        return RotationConfig()
    known = {k: v for k, v in data.items() if k in RotationConfig.model_fields}
    return RotationConfig.model_validate(known)


def save_config(conn: Connection, config: RotationConfig) -> None:
    table = ConfigRow.__table__  # type: ignore[attr-defined]
    data = config.model_dump(mode="json")
    updated = conn.execute(
        table.update().where(table.c.id == 1).values(data=data, updated_at=utcnow())
    ).rowcount
    if not updated:
        conn.execute(table.insert().values(id=1, data=data, updated_at=utcnow()))
