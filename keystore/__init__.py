"""keyrelay's keystore: encrypted provider keys leased as concurrency-limited resources.

Importable without Prefect or FastAPI. See `open_keystore` and `Keystore`."""

from keystore.clock import Clock, ManualClock, utcnow
from keystore.config import RotationConfig
from keystore.cooling import Marked, Scope
from keystore.crypto import MasterKey, fingerprint, mask
from keystore.errors import (
    ConfigError,
    DuplicateKey,
    InvalidInput,
    KeyNotFound,
    KeyrelayError,
    KeystoreUnreachable,
    LastEnabledKey,
    LeaseLost,
    MasterKeyError,
    NoKeyAvailable,
    ProviderError,
    RequestTooLarge,
)
from keystore.lease import Lease
from keystore.models import PROVIDERS, AuditEventPublic, KeyPublic, Provider
from keystore.ratelimits.signal import RateLimitSignal
from keystore.settings import Settings
from keystore.store import Keystore, open_keystore
from keystore.views import BucketPublic, Explanation, PoolStatus

__all__ = [
    "PROVIDERS",
    "AuditEventPublic",
    "BucketPublic",
    "Clock",
    "ConfigError",
    "DuplicateKey",
    "Explanation",
    "InvalidInput",
    "KeyNotFound",
    "KeyPublic",
    "KeyrelayError",
    "Keystore",
    "KeystoreUnreachable",
    "LastEnabledKey",
    "Lease",
    "LeaseLost",
    "ManualClock",
    "Marked",
    "MasterKey",
    "MasterKeyError",
    "NoKeyAvailable",
    "PoolStatus",
    "Provider",
    "ProviderError",
    "RateLimitSignal",
    "RequestTooLarge",
    "RotationConfig",
    "Scope",
    "Settings",
    "fingerprint",
    "mask",
    "open_keystore",
    "utcnow",
]
