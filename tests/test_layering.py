"""Package boundaries: ``strategies`` and ``clients`` stand without ``fl_iot``, and each without
the other, so that a plain Flower app imports either alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

FORBIDDEN = {
    "strategies": {"fl_iot", "clients"},
    "clients": {"fl_iot", "strategies"},
}
"""What each package must never import, at module level or inside a function."""


SINKS_MUST_NOT_IMPORT = {"fl_iot.round_loop", "fl_iot.server", "fl_iot.cli"}
"""The tracking sinks depend on the round's record (``fl_iot.records``), not on what fills it."""


def imported_modules(path: Path) -> set[str]:
    """The modules a module imports anywhere in its code (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports anywhere in its code."""
    return {name.split(".")[0] for name in imported_modules(path)}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_of_a_lower_package_imports_an_upper_one(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_no_sink_imports_the_round_loop() -> None:
    offenders = {
        path.name: sorted(imported_modules(path) & SINKS_MUST_NOT_IMPORT)
        for path in sorted((REPO_ROOT / "fl_iot" / "tracking").glob("*.py"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import numpy\n\ndef f():\n    from fl_iot.config import x\n    import clients.a\n"
    )
    assert imported_packages(module) == {"numpy", "fl_iot", "clients"}
    assert "fl_iot.config" in imported_modules(module)


@pytest.mark.e2e
@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_importing_a_lower_package_loads_no_upper_one(package: str) -> None:
    # A fresh interpreter: this test process has imported everything already.
    loaded = "{m.split('.')[0] for m in sys.modules}"
    code = f"import sys, {package}\nprint(sorted({loaded} & set({sorted(FORBIDDEN[package])!r})))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout
