"""Request bodies of the HTTP API. Responses are the keystore's public models (KeyPublic,
PoolStatus, Explanation, RotationConfig, AuditEventPublic).

The bodies are stricter than the keystore's KeyCreate / KeyUpdate, and say so in OpenAPI:
- strict types: `false` is not a number and "5" not an integer, as the schema says;
- a PATCH field may be left out but not sent as null (only `group` is nullable: null clears it);
- names and groups are printable (no control characters: PostgreSQL refuses NUL, and a newline
  in a name would forge lines in tables and logs);
- a secret is printable ASCII without surrounding whitespace (what every provider issues), as a
  `pattern` that the server checks the same way, so a client that follows the schema is never
  refused."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    create_model,
    field_validator,
)

from keystore import RotationConfig
from keystore.models import (
    MAX_CONCURRENCY_CAP,
    NAME_MAX,
    PRINTABLE_PATTERN,
    RESERVE_MAX,
    SECRET_MAX,
    Provider,
)
from keystore.models import PRIORITY_MAX as PRIORITY_BOUND

__all__ = ["Health", "KeyCreateRequest", "KeyUpdateRequest", "RotationConfigUpdate"]

SECRET_PATTERN = r"^[!-~]([ -~]*[!-~])?$"  # noqa: S105 (a pattern, not a password)
_SECRET_RULE = "secret must be printable ASCII without leading or trailing whitespace"  # noqa: S105

Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=PRINTABLE_PATTERN)]
Group = Annotated[
    str,
    Field(
        max_length=NAME_MAX,
        pattern=PRINTABLE_PATTERN,
        description="keys of one org/project share limits",
    ),
]


def _integral(value: object) -> object:
    """JSON Schema counts 5.0 as an integer; strict mode alone would refuse it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The constraints come before the validator, so they stay plain minimum/maximum in the schema.
Priority = Annotated[
    int,
    Field(ge=-PRIORITY_BOUND, le=PRIORITY_BOUND, description="lower is preferred"),
    BeforeValidator(_integral),
]
MaxConcurrency = Annotated[int, Field(ge=1, le=MAX_CONCURRENCY_CAP), BeforeValidator(_integral)]
Reserve = Annotated[
    float,
    Field(
        ge=0,
        le=RESERVE_MAX,
        description="share of a subscription window to leave unused (an account shared)",
    ),
]
Secret = Annotated[
    SecretStr,
    Field(
        min_length=1,
        max_length=SECRET_MAX,
        description="write-only: never returned, logged or echoed in errors",
        json_schema_extra={"pattern": SECRET_PATTERN},
    ),
]


def _check_secret(value: SecretStr | None) -> SecretStr | None:
    if value is not None and not re.fullmatch(SECRET_PATTERN, value.get_secret_value()):
        raise ValueError(_SECRET_RULE)
    return value


def _omit_defaults(schema: dict[str, Any]) -> None:
    """In a PATCH body a left-out field is unchanged, not set to a default: show no defaults."""
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class KeyCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name
    provider: Provider
    secret: Secret
    priority: Priority = 100
    max_concurrency: MaxConcurrency = 1
    enabled: bool = True
    group: Group | None = None
    reserve: Reserve = 0.0

    _secret_rule = field_validator("secret")(_check_secret)


class KeyUpdateRequest(BaseModel):
    """Only the fields sent are changed."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_omit_defaults)

    name: Name = None  # type: ignore[assignment]
    priority: Priority = None  # type: ignore[assignment]
    max_concurrency: MaxConcurrency = None  # type: ignore[assignment]
    enabled: bool = None  # type: ignore[assignment]
    group: Group | None = Field(None, description="null clears the group")
    secret: Secret = None  # type: ignore[assignment]
    reserve: Reserve = None  # type: ignore[assignment]

    _secret_rule = field_validator("secret")(_check_secret)

    def changes(self) -> dict[str, Any]:
        """The fields that were sent, with the secret unwrapped for the keystore."""
        data = self.model_dump(exclude_unset=True, exclude={"secret"})
        if "secret" in self.model_fields_set:
            assert self.secret is not None
            data["secret"] = self.secret.get_secret_value()
        return data


def _partial(model: type[BaseModel]) -> type[BaseModel]:
    """`model` with every field optional (left out = unchanged, null refused) and the same
    constraints, so the PATCH body and the stored config can never drift apart."""
    fields: dict[str, Any] = {
        field: (
            Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation,
            Field(None, description=info.description),
        )
        for field, info in model.model_fields.items()
    }
    return create_model(
        f"{model.__name__}Fields",
        __config__=ConfigDict(extra="forbid", strict=True, json_schema_extra=_omit_defaults),
        **fields,
    )


class RotationConfigUpdate(_partial(RotationConfig)):  # type: ignore[misc]
    """Fields to change; the others keep their value."""
