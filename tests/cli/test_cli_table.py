"""The shared table: columns by priority to fit a terminal, middle elision, whole on a pipe."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from aggregator.cli._table import Column, elide_middle, fit, print_table

COLUMNS = (
    Column("account", 0, elide=False),
    Column("name", 1, min_width=8),
    Column("count", 2, justify="right", elide=False),
    Column("note", 3, min_width=10, wrap=True),
)
ROWS = [["111111111111", "a-very-long-source-name-that-goes-on", "42", "x " * 40]]


def test_elide_middle_keeps_both_ends() -> None:
    assert elide_middle("abcdefghij", 10) == "abcdefghij"
    assert elide_middle("abcdefghij", 5) == "ab…ij"
    assert elide_middle("abcdefghij", 4) == "ab…j"
    assert len(elide_middle("x" * 100, 17)) == 17


def test_fit_takes_columns_in_priority_order_and_never_squeezes_ids() -> None:
    widths = fit(COLUMNS, ROWS, 40)
    assert widths[0] == 12  # account whole
    assert widths[1] is not None
    assert widths[1] >= 8
    assert sum(w + 3 for w in widths if w is not None) + 1 <= 40
    assert fit(COLUMNS, ROWS, 20) == [12, None, None, None]  # nothing squeezed to nothing


@pytest.mark.parametrize("width", [80, 100, 120])
def test_print_table_fits_each_width(width: int) -> None:
    console = Console(width=width, record=True, force_terminal=True, color_system=None)
    print_table(console, COLUMNS, ROWS * 3, title="t")
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= width
    assert all("111111111111" in line for line in lines if line.startswith("│ 1"))


def test_print_table_on_a_pipe_is_whole() -> None:
    out = io.StringIO()
    print_table(Console(file=out, width=80), COLUMNS, ROWS, title="t")
    text = out.getvalue()
    assert "a-very-long-source-name-that-goes-on" in text
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) > 80


def test_markup_in_data_is_escaped_by_callers_and_styles_survive_elision() -> None:
    console = Console(width=40, record=True, force_terminal=True)
    print_table(console, (Column("status", 0),), [["[red]FAIL[/red]"]])
    assert "FAIL" in console.export_text()
    assert "[red]" not in console.export_text()
