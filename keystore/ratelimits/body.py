"""Response bodies (bytes, str, SSE text, parsed JSON) reduced to the one dict that matters.

Error payloads are all shaped `{"error": {...}, ...}` (Anthropic adds `"type": "error"`), but they
arrive in different wrappings: a JSON document, a JSON array (Gemini's streaming endpoint), or an
SSE stream whose `event: error` carries the payload in its `data:` line (Anthropic can send that
after a 200). `decode_body` unwraps all of them and returns `{}` for anything else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

BodyLike = bytes | bytearray | str | Mapping[str, Any] | Sequence[Any] | None


def decode_body(body: object) -> dict[str, Any]:
    """The error-bearing JSON object of a body, the whole object for plain JSON, or `{}`."""
    if isinstance(body, bytes | bytearray | memoryview):
        body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, str):
        return _decode_text(body)
    return _pick_object(body)


def _decode_text(text: str) -> dict[str, Any]:
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        return _pick_object(_load_json(stripped))
    if "data:" in stripped:
        return _decode_sse(stripped)
    return {}


def _load_json(text: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # truncated, invalid, absurdly deep, giant integers
        return None


def _pick_object(value: object) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
        for item in value:
            if isinstance(item, Mapping) and "error" in item:
                return dict(item)
    return {}


def _decode_sse(text: str) -> dict[str, Any]:
    """The first error event of an SSE stream: `event: error`, or any data object with `error`."""
    event = ""
    data: list[str] = []
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            found = _sse_error(event, "\n".join(data))
            if found:
                return found
            event, data = "", []
        elif line.startswith("event:"):
            event = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].strip())
    return {}


def _sse_error(event: str, data: str) -> dict[str, Any]:
    if not data:
        return {}
    payload = _pick_object(_load_json(data))
    if event == "error" or "error" in payload or payload.get("type") == "error":
        return payload
    return {}


def decode_embedded(text: str) -> dict[str, Any]:
    """The first JSON object inside free text (`API Error: 429 {...} more words`), or `{}`."""
    start = text.find("{")
    if start < 0:
        return {}
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        return {}
    return _pick_object(value)


def error_object(body: Mapping[str, Any]) -> dict[str, Any]:
    """`body["error"]` as a dict; a bare string error becomes its message."""
    error = body.get("error")
    if isinstance(error, Mapping):
        return dict(error)
    if isinstance(error, str):
        return {"message": error}
    return {}


def text_at(value: object, *path: str) -> str | None:
    """The string at `value[path[0]][path[1]]...`, or None when any step is missing or not a str."""
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value if isinstance(value, str) else None


def value_at(value: object, *path: str) -> object:
    """Whatever sits at the path, or None."""
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value
