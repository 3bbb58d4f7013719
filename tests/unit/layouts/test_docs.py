"""docs/layouts.md is generated from the layout tables and must not drift from them."""

from __future__ import annotations

from pathlib import Path

from kei_gateway.layouts import LAYOUTS
from kei_gateway.layouts.docs import render_layout_table, render_layouts_markdown

DOC = Path(__file__).resolve().parents[3] / "docs" / "layouts.md"


def test_when_the_layout_tables_change_then_docs_layouts_md_must_be_regenerated() -> None:
    """Regenerate with: .venv/bin/python -m kei_gateway.layouts.docs > docs/layouts.md"""
    assert DOC.read_text(encoding="utf-8") == render_layouts_markdown()


def test_when_a_layout_is_rendered_then_every_field_has_a_row_with_its_name_key_kind_and_width() -> None:
    for layout in LAYOUTS.values():
        table = render_layout_table(layout)
        for number, item in enumerate(layout.fields, start=1):
            assert f"| {number} | {item.name} | {item.key} | {item.kind.value} | {item.width} |" in table
        assert f"{layout.record_length} bytes per record" in table


def test_when_the_record_lengths_are_summed_then_they_match_the_spec() -> None:
    assert {name: layout.record_length for name, layout in LAYOUTS.items()} == {
        "jnks-payments": 70, "jnks-receipts": 100, "mpn-slips": 158, "mpn-results": 258,
        "tax-register-2w": 229, "airis-reconcile": 226}
