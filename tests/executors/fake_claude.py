"""A stand-in for the `claude` CLI, for fast tests of the claude-code executor's plumbing.

It speaks the same contract as the real CLI 2.1.332 as far as the executor relies on it (prompt on
stdin, stream-json lines on stdout, the session transcript under
`$CLAUDE_CONFIG_DIR/projects/<cwd key>/<session id>.jsonl`, `--resume` finding it under any
project key) and misbehaves on request: FAKE_CLAUDE_MODE (given through the executor's
`extra_env`) is one of ok, slow, hang, crash, limit, unauthorized, leak, forget.
FAKE_CLAUDE_OUT names a file where it writes what it saw (argv, environment, stdin, pids) for
the test to inspect.

The real CLI's behaviour is covered by the slow tests in test_executor_claude_code.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path


def emit(event: dict[str, object]) -> None:
    print(json.dumps(event), flush=True)


def main() -> int:
    args = sys.argv[1:]
    mode = os.environ.get("FAKE_CLAUDE_MODE", "ok")
    prompt = sys.stdin.read()
    resume = args[args.index("--resume") + 1] if "--resume" in args else None
    config = Path(os.environ["CLAUDE_CONFIG_DIR"])
    seen: dict[str, object] = {
        "argv": args,
        "env": dict(os.environ),
        "stdin": prompt,
        "cwd": os.getcwd(),
        "pid": os.getpid(),
    }
    if mode == "hang":
        grandchild = subprocess.Popen(["sleep", "300"])
        seen["grandchild"] = grandchild.pid
    if out := os.environ.get("FAKE_CLAUDE_OUT"):
        Path(out).write_text(json.dumps(seen))
    if mode == "crash":
        print("TypeError: something broke", file=sys.stderr)
        return 3
    existing = sorted(config.glob(f"projects/*/{resume}.jsonl")) if resume else []
    if mode == "forget":  # as if the restored transcript were not there
        existing = []
    if resume and not existing:
        print(f"No conversation found with session ID: {resume}", file=sys.stderr)
        return 1
    session_id = resume or str(uuid.uuid4())
    emit({"type": "system", "subtype": "init", "session_id": session_id})
    print("a line that is not JSON", flush=True)
    if mode == "hang":
        time.sleep(300)
    if mode == "slow":
        time.sleep(0.5)
    if mode == "limit":
        info = {"status": "rejected", "resetsAt": 1767243600, "rateLimitType": "five_hour"}
        emit({"type": "rate_limit_event", "rate_limit_info": info})
        emit({"type": "result", "is_error": True, "api_error_status": 429, "result": "limit"})
        return 1
    if mode == "unauthorized":
        text = "Invalid API key · Fix external API key"
        emit({"type": "result", "is_error": True, "api_error_status": 401, "result": text})
        return 1
    path = (
        existing[0] if existing else config / "projects" / key(os.getcwd()) / f"{session_id}.jsonl"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    earlier = path.read_text().splitlines() if path.exists() else []
    turn = 1 + sum(1 for line in earlier if json.loads(line)["role"] == "user")
    reply = f"fake turn {turn}: {prompt}"
    if mode == "leak":
        reply += " " + os.environ.get(
            "ANTHROPIC_API_KEY", os.environ.get("CLAUDE_CODE_OAUTH_TOKEN", "")
        )
    with path.open("a") as transcript:
        for role, text in (("user", prompt), ("assistant", reply)):
            transcript.write(json.dumps({"role": role, "text": text}) + "\n")
    windows = {"five_hour": {"utilization": 0.4, "status": "allowed"}}
    emit(
        {
            "type": "rate_limit_event",
            "rate_limit_info": {"status": "allowed", "unifiedWindows": windows},
        }
    )
    usage = {"input_tokens": 10 * turn, "output_tokens": 5, "cache_read_input_tokens": 0}
    emit(
        {
            "type": "result",
            "is_error": False,
            "result": reply,
            "session_id": session_id,
            "usage": usage,
        }
    )
    return 0


def key(cwd: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "-", cwd)


if __name__ == "__main__":
    sys.exit(main())
