"""Time values found in limit responses, turned into aware UTC datetimes.

The rules (RATE_LIMITS.md, "Time rules"), and the choices made where the spec allows two:

- Relative values (seconds, milliseconds, Go durations) land at `received_at + delta`. Zero means
  "now" and lands at `received_at`; a negative, non-numeric or non-finite value is junk and counts
  as absent (RFC 9110 allows only non-negative delay-seconds).
- Absolute values (epoch seconds, RFC 3339, HTTP-date) are moved by the skew between our clock and
  the server's `Date` header. A value at or before `received_at` clamps to `received_at`: the server
  did name a moment, it has just passed. A non-positive epoch is an unset field, so it is absent.
- Anything further than `MAX_HORIZON` away is junk and counts as absent: a garbled header must not
  bench a key for years, and "absent" means a short probe cooldown.
- A `Date` header more than `MAX_SKEW` off our clock is not trusted (no correction is made).
- A `Date` header within `DATE_PRECISION` of our clock is not a skew at all: it has whole seconds
  only, so a server in step with us looks up to a second behind (plus the response's travel
  time); correcting for that would push every absolute reset up to a second late.

Every parser here returns None for junk and never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime

# The longest real window is a calendar month (spend caps); a year and a bit leaves room for that.
MAX_HORIZON = timedelta(days=400)
MAX_SKEW = timedelta(days=1)
DATE_PRECISION = timedelta(seconds=1.5)  # whole seconds, and the response's travel time

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HORIZON_US = Decimal(int(MAX_HORIZON.total_seconds()) * 1_000_000)
_LATEST_EPOCH_S = Decimal(253_402_300_799)  # 9999-12-31T23:59:59Z, datetime's ceiling

_DECIMAL = re.compile(r"\d+(?:\.\d+)?|\.\d+", re.ASCII)
# Go's time.Duration.String(): h, m, s, ms, us/µs, ns; OpenAI has only been seen using h/m/s/ms.
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|μs|ns|h|m|s)", re.ASCII)
_GO_UNIT_US = {
    "h": Decimal(3_600_000_000),
    "m": Decimal(60_000_000),
    "s": Decimal(1_000_000),
    "ms": Decimal(1_000),
    "us": Decimal(1),
    "µs": Decimal(1),
    "μs": Decimal(1),
    "ns": Decimal("0.001"),
}


def _micros(value: Decimal) -> timedelta | None:
    """A non-negative count of microseconds as a timedelta, or None past the horizon."""
    if not value.is_finite() or value < 0 or value > _HORIZON_US:
        return None
    return timedelta(microseconds=int(value.to_integral_value()))


def parse_decimal(value: object) -> Decimal | None:
    """A plain non-negative decimal number ("12", "1.5"), from a str or a JSON number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        # Decimal(int) needs no str(), which refuses integers over 4300 digits.
        return Decimal(value) if value >= 0 else None
    if isinstance(value, float):
        value = repr(value)  # repr keeps float precision; exponents fail the pattern below
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not _DECIMAL.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except (InvalidOperation, ValueError):
        return None


def parse_seconds(value: object) -> timedelta | None:
    """Delay-seconds as in `retry-after: 12` (a fraction is tolerated)."""
    number = parse_decimal(value)
    return None if number is None else _micros(number * 1_000_000)


def parse_milliseconds(value: object) -> timedelta | None:
    """Delay in milliseconds as in `retry-after-ms: 1500`."""
    number = parse_decimal(value)
    return None if number is None else _micros(number * 1_000)


def parse_go_duration(value: object) -> timedelta | None:
    """A Go duration string: `1s`, `6m0s`, `12ms`, `4m12.172s`, `23h47m36.648s`; also "0"."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text == "0":
        return timedelta(0)
    if not text or _GO_PART.sub("", text):
        return None  # something other than number+unit pairs is left over
    total = Decimal(0)
    for number, unit in _GO_PART.findall(text):
        try:
            total += Decimal(number) * _GO_UNIT_US[unit]
        except (InvalidOperation, ValueError):
            return None
    return _micros(total)


def parse_epoch(value: object) -> datetime | None:
    """Epoch seconds (`1767243600`, as str or JSON number). Zero or negative is an unset field."""
    number = parse_decimal(value)
    if number is None or number <= 0 or number > _LATEST_EPOCH_S:
        return None
    return _EPOCH + timedelta(microseconds=int((number * 1_000_000).to_integral_value()))


def parse_rfc3339(value: object) -> datetime | None:
    """`2025-08-21T12:40:59Z` and friends. A value without an offset is read as UTC."""
    if not isinstance(value, str) or not value.strip() or value.strip().isdigit():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return _as_utc(parsed)


def parse_http_date(value: object) -> datetime | None:
    """IMF-fixdate, RFC 850 or asctime (RFC 9110 5.6.7); HTTP-dates are always GMT."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    return _as_utc(parsed)


def parse_absolute(value: object) -> datetime | None:
    """Whichever absolute form the value is in: epoch seconds, RFC 3339 or HTTP-date."""
    return parse_epoch(value) or parse_rfc3339(value) or parse_http_date(value)


def require_aware(received_at: object) -> datetime:
    """`received_at` in UTC; a naive or non-datetime value is a caller bug, not junk input."""
    if not isinstance(received_at, datetime):
        raise ValueError(f"received_at must be a timezone-aware datetime, got {received_at!r}")
    if received_at.tzinfo is None or received_at.utcoffset() is None:
        raise ValueError("received_at must be timezone-aware")
    return received_at.astimezone(UTC)


def _as_utc(moment: datetime) -> datetime | None:
    try:
        if moment.tzinfo is None or moment.utcoffset() is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ResponseClock:
    """When a response arrived, and how far the server's clock is from ours.

    `skew` is `received_at - Date`: adding it to a server-side moment gives the same moment on our
    clock, i.e. `received_at + (absolute - Date)`.
    """

    received_at: datetime
    skew: timedelta = timedelta(0)

    @classmethod
    def from_date_header(cls, *, received_at: datetime, date: str | None) -> ResponseClock:
        received_at = received_at.astimezone(UTC)
        server_now = parse_http_date(date)
        if server_now is None:
            return cls(received_at=received_at)
        skew = received_at - server_now
        if abs(skew) > MAX_SKEW or abs(skew) < DATE_PRECISION:
            return cls(received_at=received_at)
        return cls(received_at=received_at, skew=skew)

    def after(self, delta: timedelta | None) -> datetime | None:
        """`received_at + delta` for a relative value (already validated as non-negative)."""
        if delta is None or delta < timedelta(0) or delta > MAX_HORIZON:
            return None
        return self.received_at + delta

    def at(self, moment: datetime | None) -> datetime | None:
        """A server-side absolute moment on our clock: skew-corrected, clamped, bounded."""
        if moment is None:
            return None
        try:
            corrected = moment.astimezone(UTC) + self.skew
        except (OverflowError, ValueError):
            return None
        if corrected <= self.received_at:
            return self.received_at
        if corrected - self.received_at > MAX_HORIZON:
            return None
        return corrected

    def retry_after(self, value: str | None) -> datetime | None:
        """`Retry-After`: delay-seconds, or an HTTP-date (RFC 9110 10.2.3)."""
        delay = parse_seconds(value)
        if delay is not None:
            return self.after(delay)
        return self.at(parse_http_date(value))
