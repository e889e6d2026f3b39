"""Dependencies point one way: api -> pipeline -> engines, tokenizer, parsers, multimodal,
routing -> protocol. Read from the source's import statements, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "herdsman"

# What each package must not import (a layer above it).
FORBIDDEN = {
    "protocol": ("api", "pipeline", "engines", "tokenizer", "parsers", "multimodal", "routing"),
    "pipeline": ("api",),
    "engines": ("api", "pipeline"),
    "tokenizer": ("api", "pipeline"),
    "parsers": ("api", "pipeline"),
    "multimodal": ("api", "pipeline"),
    "routing": ("api", "pipeline"),
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_a_layer_above_it(package: str) -> None:
    files = sorted((SRC / package).rglob("*.py"))
    assert files
    above = tuple(f"herdsman.{name}" for name in FORBIDDEN[package])
    wrong = {
        f"{path.relative_to(SRC)}: {name}"
        for path in files
        for name in imported(path)
        if name in above or name.startswith(tuple(f"{a}." for a in above))
    }
    assert not wrong, sorted(wrong)
