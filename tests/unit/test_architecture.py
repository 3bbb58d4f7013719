"""The folder rules of docs/architecture.md, checked on the source (``ast``; nothing is imported).

Each folder of ``kei_gateway/`` may import only what its rule allows, so the
dependency graph keeps pointing one way: cli → runtime → flows/operations →
adapters → core. A failure names the importing file, its line and the rule it breaks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kei_gateway"

RUNTIME_ROOT = {"kei_gateway.runtime.service", "kei_gateway.runtime.daemon", "kei_gateway.cli"}
"""Modules only the command line and the runtime may import (the composition root, the daemon, the CLI)."""

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("adapters", "flows", "operations", "runtime", "cli", "sim", "testing", "tools"),
    "adapters": ("flows", "operations", "cli", "sim", "testing", "tools"),
    "flows": ("operations", "cli", "sim", "testing", "tools"),
    "operations": ("flows", "cli", "sim", "testing", "tools"),
    "runtime": ("cli", "sim", "testing", "tools"),
    "sim": ("flows", "operations", "cli", "testing", "tools"),
    "testing": ("flows", "operations", "cli", "sim", "tools"),
    "layouts": ("adapters", "flows", "operations", "cli", "sim", "testing", "tools"),
    "config": ("adapters", "flows", "operations", "runtime", "cli", "sim", "testing", "tools"),
}
"""Folder → the folders it must never import (docs/architecture.md, "What each folder may import")."""


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``kei_gateway`` module *path* imports (at any depth: lazy imports count too)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("kei_gateway.")]


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""


def _violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_of(path)
        folder = _folder(module)
        for line, imported in _imports(path):
            target = _folder(imported)
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}"
            if target in FORBIDDEN.get(folder, ()) and target != folder:
                problems.append(f"{where}: {folder}/ must not import {target}/")
            if folder not in ("cli", "runtime", "") and any(imported == root or imported.startswith(root + ".")
                                                           for root in RUNTIME_ROOT):
                problems.append(f"{where}: only cli/ and runtime/ may import the composition root and the CLI")
    return problems


def test_when_the_source_is_read_then_no_folder_imports_what_its_rule_forbids() -> None:
    assert _violations() == []


def test_when_the_ledger_is_read_then_it_never_imports_a_flow() -> None:
    ledger = PACKAGE / "adapters" / "ledger"
    offending = [f"{path.name}:{line} {name}" for path in ledger.rglob("*.py") for line, name in _imports(path)
                 if name.startswith("kei_gateway.flows")]
    assert offending == []


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_when_a_folder_has_a_rule_then_it_exists(folder: str) -> None:
    """A renamed folder must take its rule along (else the rule silently checks nothing)."""
    assert (PACKAGE / folder / "__init__.py").is_file()


def test_when_the_rules_are_checked_then_a_forbidden_import_is_reported(tmp_path: Path) -> None:
    """The checker itself: a core module importing an adapter is named with file and line."""
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom kei_gateway.adapters.ledger import TransferLedger\n", encoding="utf-8")
    assert _imports(probe) == [(2, "kei_gateway.adapters.ledger.TransferLedger")]
    assert "adapters" in FORBIDDEN["core"]


def _state_literals(path: Path, names: set[str]) -> list[str]:
    """``x == "HELD"``, ``x in ("FAILED", ...)`` and ``state="QUEUED"`` in *path*: states written as strings."""
    found = []

    def literal(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(literal(element) for element in node.elts)
        return False

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare) and any(literal(side) for side in [node.left, *node.comparators]):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
        elif isinstance(node, ast.keyword) and node.arg == "state" and literal(node.value):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.value.lineno}")
    return found


def test_when_the_source_is_read_then_no_transfer_state_is_compared_as_a_string_literal() -> None:
    """The states live in core/transfer.py; elsewhere they are ``TransferState`` members (the simulators excepted:
    their states are the peers', not ours)."""
    from kei_gateway.core.transfer import TransferState

    names = {state.value for state in TransferState}
    offending = [hit for path in sorted(PACKAGE.rglob("*.py"))
                 if path.relative_to(PACKAGE).parts[0] not in ("sim",) and path.name != "transfer.py"
                 for hit in _state_literals(path, names)]
    assert offending == []
