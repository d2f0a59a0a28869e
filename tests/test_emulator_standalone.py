"""The emulator stands for the provider, a stranger to keyrelay: it must not import `keystore`,
neither in its source nor through anything it loads. Its own key naming must still be safe."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from api.emulator import fingerprint, mask

EMULATOR = Path(__file__).resolve().parents[1] / "api" / "emulator"


def imported_modules(source: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            modules.add(node.module)
    return modules


def test_no_emulator_module_imports_the_keystore() -> None:
    sources = sorted(EMULATOR.rglob("*.py"))
    assert len(sources) > 10  # the scan really looked at the package
    offenders = {
        str(source.relative_to(EMULATOR)): sorted(
            m for m in imported_modules(source) if m.split(".")[0] == "keystore"
        )
        for source in sources
    }
    assert {path: found for path, found in offenders.items() if found} == {}


def test_importing_the_emulator_loads_no_keystore_module() -> None:
    probe = (
        "import sys\n"
        "import api.emulator, api.emulator.__main__\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'keystore'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_fingerprint_is_the_first_16_hex_chars_of_sha256() -> None:
    secret = "sk-ant-api03-fingerprint-0123456789abcdef"
    assert fingerprint(secret) == hashlib.sha256(secret.encode()).hexdigest()[:16]


@pytest.mark.parametrize("length", [0, 1, 2, 3, 5, 8, 11, 12, 20, 33, 34, 60, 200])
def test_the_masked_form_shows_at_most_7_plus_4_chars_and_a_third(length: int) -> None:
    secret = "".join(chr(ord("a") + i % 26) for i in range(length))
    masked = mask(secret)
    head, sep, tail = masked.partition("...")
    assert sep == "..."
    assert secret.startswith(head) and secret.endswith(tail)
    assert len(head) <= 7 and len(tail) <= 4
    assert len(head) + len(tail) <= length // 3
