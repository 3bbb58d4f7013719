"""docs/airis.md is generated from the AIRIS layouts and must not drift from them."""

from __future__ import annotations

from pathlib import Path

from kei_gateway.layouts.airis import AIRIS_COLUMNS, CATEGORIES
from kei_gateway.tools.airis_docs import render_airis_markdown

DOC = Path(__file__).resolve().parents[3] / "docs" / "airis.md"


def test_when_the_airis_layouts_change_then_docs_airis_md_must_be_regenerated() -> None:
    """Regenerate with: .venv/bin/python -m kei_gateway.tools.airis_docs > docs/airis.md"""
    assert DOC.read_text(encoding="utf-8") == render_airis_markdown()


def test_when_the_doc_is_rendered_then_every_column_and_category_has_a_row() -> None:
    text = render_airis_markdown()
    for number, column in enumerate(AIRIS_COLUMNS, start=1):
        assert f"| {number} | {column.name} | {column.key} | {column.kind.value} |" in text
    for code, name in CATEGORIES.items():
        assert f"| `{code}` | {name} |" in text
