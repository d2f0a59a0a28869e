"""The `claude` CLI's `result` text on a refusal, and the reset moment written in it.

    Claude AI usage limit reached|1767243600                              old: epoch seconds
    You've hit your session limit · resets 12pm (America/New_York)        U+00B7 now, U+2219 in 2025
    You've hit your weekly limit · resets Jan 3 at 4pm (America/Los_Angeles)
    API Error: Request rejected (429) · Rate limited                      rate_limit, no reset
    API Error: 529 Overloaded                                             overloaded
    Credit balance is too low                                             quota_exhausted (API key)

The separator is not relied on: the phrase and the `resets ... (<IANA zone>)` clause are matched
on their own, so both separators (and a future third) work.

A `result` is also the model's own answer, which may quote these phrases; so unless the CLI flags
the result as an error, a pattern must start the text to count.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from keystore.ratelimits.anthropic import parse_anthropic
from keystore.ratelimits.body import decode_embedded
from keystore.ratelimits.headers import Headers
from keystore.ratelimits.signal import RateLimitSignal
from keystore.ratelimits.timeparse import ResponseClock, parse_epoch

SOURCE = "result"
# A time-only reset shown as "12pm" may name a moment a little behind our clock (the CLI rounds,
# and the text took time to reach us). Within this grace it means "now"; further back, the CLI
# meant tomorrow.
PAST_GRACE = timedelta(minutes=15)

_OLD = re.compile(r"Claude AI usage limit reached(?:\|(?P<epoch>\d+))?", re.A)
_HIT = re.compile(
    r"You[\u2019']ve hit your\b[^\n]*?\blimit\b|[^\n]{0,40}?\blimit reached\b", re.I | re.A
)
_RESETS = re.compile(
    r"\bresets?\s+(?:at\s+)?(?P<when>[^()\n]+?)\s*\((?P<zone>[^()\s]+)\)", re.I | re.A
)
_NO_CREDIT = re.compile(r"(?:Your )?credit balance is too low", re.I | re.A)
_API_ERROR = re.compile(
    r"API Error:\s*(?:(?P<status>\d{3})\b|[^\n(]*\((?P<paren>\d{3})\))(?P<rest>.*)", re.S | re.A
)
_WHEN = re.compile(
    r"(?:(?P<month>[a-z]{3,9})\.?\s+(?P<day>\d{1,2})(?:,\s*|\s+at\s+|\s+))?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?:(?P<ampm>[ap])\.?m\.?)?",
    re.I | re.A,
)
# JavaScript date formatting puts U+202F (narrow no-break space) before AM/PM on newer ICU.
_SPACES = str.maketrans(dict.fromkeys("\u00a0\u2007\u2009\u202f", " "))
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}


def parse_result_text(
    text: str, *, received_at: datetime, is_error: bool
) -> RateLimitSignal | None:
    text = text.translate(_SPACES).strip()

    def find(pattern: re.Pattern[str]) -> re.Match[str] | None:
        return pattern.search(text) if is_error else pattern.match(text)

    if old := find(_OLD):
        resets_at = ResponseClock(received_at=received_at).at(parse_epoch(old["epoch"]))
        return _usage_limit(resets_at)
    if hit := find(_HIT):
        resets = _RESETS.search(text, hit.end())
        return _usage_limit(
            resets_at_wall_clock(resets, received_at=received_at) if resets else None
        )
    if find(_NO_CREDIT):
        return RateLimitSignal(
            kind="quota_exhausted", resets_at=None, retryable=False, source=SOURCE
        )
    if api_error := find(_API_ERROR):
        status = int(api_error["status"] or api_error["paren"])
        signal = parse_anthropic(
            status=status,
            headers=Headers(),
            body=decode_embedded(api_error["rest"]),
            clock=ResponseClock(received_at=received_at),
        )
        return replace(signal, source=SOURCE) if signal is not None else None
    return None


def _usage_limit(resets_at: datetime | None) -> RateLimitSignal:
    return RateLimitSignal(kind="usage_limit", resets_at=resets_at, retryable=True, source=SOURCE)


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError for malformed keys, OSError on odd paths
        return None


def resets_at_wall_clock(resets: re.Match[str], *, received_at: datetime) -> datetime | None:
    """`resets 12pm (America/New_York)` / `resets Jan 3 at 4pm (...)` as an aware UTC moment.

    Without a date: today in that zone, or tomorrow if that is already past (beyond the grace).
    With a date: the year that puts it nearest to `received_at` (a reset is days away, never a
    year), so "Jan 3" read on Dec 31 is next year's. A moment already past clamps to now.
    """
    zone = _zone(resets["zone"])
    when = _WHEN.fullmatch(resets["when"].strip())
    if zone is None or when is None:
        return None
    clock_time = _clock_time(when)
    if clock_time is None:
        return None
    local_now = received_at.astimezone(zone)
    if when["month"]:
        month = _MONTHS.get(when["month"][:3].lower())
        if month is None:
            return None
        candidates = []
        for year in (local_now.year - 1, local_now.year, local_now.year + 1):
            try:
                candidates.append(datetime(year, month, int(when["day"]), tzinfo=zone))
            except ValueError:  # Feb 30, or Feb 29 outside a leap year
                continue
        if not candidates:
            return None
        day = min(candidates, key=lambda c: abs(c - received_at)).date()
        moment = datetime.combine(day, clock_time, tzinfo=zone)
    else:
        moment = datetime.combine(local_now.date(), clock_time, tzinfo=zone)
        if moment < received_at - PAST_GRACE:
            # Combine with the next date rather than adding 24 h, so a DST change keeps "4pm".
            moment = datetime.combine(local_now.date() + timedelta(days=1), clock_time, tzinfo=zone)
    return ResponseClock(received_at=received_at).at(moment)


def _clock_time(when: re.Match[str]) -> time | None:
    hour, minute = int(when["hour"]), int(when["minute"] or 0)
    if when["ampm"]:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if when["ampm"].lower() == "p" else 0)
    if hour > 23 or minute > 59:
        return None
    return time(hour, minute)
