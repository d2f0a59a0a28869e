"""`python -m api.emulator --port N [--host H] [--config file.json]` (also `keyrelay emulate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from api.emulator.config import EmulatorConfig
from api.emulator.server import run_emulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--config", type=Path, help="EmulatorConfig as JSON")
    args = parser.parse_args(argv)
    config = EmulatorConfig()
    if args.config is not None:
        config = EmulatorConfig.model_validate_json(args.config.read_text())
    run_emulator(args.host, args.port, config)


if __name__ == "__main__":
    main()
