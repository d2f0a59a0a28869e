"""`python -m api.emulator --port N [--host H] [--config file.json] [--requests N --window-s S]
[--input-tokens N] [--agent-steps N | --agent-script file.json]` (also `keyrelay emulate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from api.emulator.config import EmulatorConfig
from api.emulator.quick_config import QuickOptionError, QuickOptions, config_summary
from api.emulator.server import run_emulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--config", type=Path, help="EmulatorConfig as JSON")
    parser.add_argument("--requests", type=int, help="requests per window, for every key")
    parser.add_argument("--input-tokens", type=int, help="input tokens per window, every key")
    parser.add_argument("--window-s", type=float, help="window of those limits (default 60)")
    parser.add_argument("--agent-steps", type=int, help="play N Bash steps")
    parser.add_argument("--agent-script", type=Path, help="AgentScript as JSON")
    args = parser.parse_args(argv)
    config = EmulatorConfig()
    if args.config is not None:
        config = EmulatorConfig.model_validate_json(args.config.read_text())
    options = QuickOptions(
        requests=args.requests,
        input_tokens=args.input_tokens,
        window_s=args.window_s,
        agent_steps=args.agent_steps,
        agent_script=args.agent_script,
    )
    try:
        config = options.apply(config)
    except QuickOptionError as exc:
        parser.error(str(exc))
    print(f"emulator on http://{args.host}:{args.port}: {config_summary(config)}", flush=True)
    run_emulator(args.host, args.port, config)


if __name__ == "__main__":
    main()
