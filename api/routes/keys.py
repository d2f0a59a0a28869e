"""Keys: add, list, read, change, delete, reset. Secrets go in, never come out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from api.deps import KeyId, KeystoreDep
from api.errors import error_responses
from api.schemas import KeyCreateRequest, KeyUpdateRequest
from keystore import KeyPublic, Provider

router = APIRouter(prefix="/keys")


@router.post(
    "",
    response_model=KeyPublic,
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(400, 409, 422, c409="A key with the same secret exists"),
)
def add_key(ks: KeystoreDep, body: KeyCreateRequest) -> KeyPublic:
    """Add a key. The secret is encrypted at rest and never shown again: responses carry its
    masked form and fingerprint."""
    return ks.add_key(**body.model_dump(exclude={"secret"}), secret=body.secret.get_secret_value())


@router.get("", response_model=list[KeyPublic], responses=error_responses(422))
def list_keys(
    ks: KeystoreDep,
    provider: Annotated[Provider | None, Query(description="only this provider's keys")] = None,
) -> list[KeyPublic]:
    """Every key (or one provider's), ordered by provider, priority, id."""
    return ks.list_keys(provider)


@router.get("/{id:int}", response_model=KeyPublic, responses=error_responses(404, 422))
def read_key(ks: KeystoreDep, key_id: KeyId) -> KeyPublic:
    """One key."""
    return ks.get_key(key_id)


@router.patch(
    "/{id:int}",
    response_model=KeyPublic,
    responses=error_responses(
        400,
        404,
        409,
        422,
        c409="Disabling the provider's last enabled key, or the new secret belongs to another key",
    ),
)
def update_key(ks: KeystoreDep, key_id: KeyId, body: KeyUpdateRequest) -> KeyPublic:
    """Change some of a key's fields; fields left out keep their value. A new `secret` replaces
    the old one and clears an unusable mark. Disabling the provider's last enabled key is
    refused, also when two requests race."""
    return ks.update_key(key_id, **body.changes())


@router.delete(
    "/{id:int}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404, 409, 422, c409="The provider's last enabled key"),
)
def delete_key(ks: KeystoreDep, key_id: KeyId) -> Response:
    """Delete a key and its lease slots. The provider's last enabled key is refused, also when
    two requests race."""
    ks.delete_key(key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{id:int}/reset", response_model=KeyPublic, responses=error_responses(404, 422))
def reset_key(ks: KeystoreDep, key_id: KeyId) -> KeyPublic:
    """Clear the key's cooling and unusable marks (someone says it works again); audited as
    `key_reset`."""
    return ks.reset_key(key_id)
