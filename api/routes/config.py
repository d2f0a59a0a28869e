"""RotationConfig: how the pool behaves when keys run out. Stored in the keystore database, so
the CLI, the API and every worker share it."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import KeystoreDep
from api.errors import error_responses
from api.schemas import RotationConfigUpdate
from keystore import RotationConfig

router = APIRouter(prefix="/keys")


@router.get("/config", response_model=RotationConfig)
def read_config(ks: KeystoreDep) -> RotationConfig:
    """The current rotation settings."""
    return ks.config()


@router.patch(
    "/config",
    response_model=RotationConfig,
    responses=error_responses(400, 422, c422="Unknown field or bad value"),
)
def update_config(ks: KeystoreDep, changes: RotationConfigUpdate) -> RotationConfig:
    """Change some rotation settings; fields left out keep their value. Workers see the change
    within about a second."""
    return ks.update_config(**changes.model_dump(exclude_unset=True))
