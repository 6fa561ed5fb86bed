"""Tables for people: columns chosen by priority to fit the terminal, long names elided in the
middle, nothing cut on a pipe.

On a terminal a table never gets wider than the terminal: columns are taken in priority order
(account and region first) as long as each fits at its minimum width, then the room left
widens them, in the same order, up to their natural width; cells longer than their column are
elided in the middle (``org:central-…-trail-logs``), so both ends of a name stay readable.
Columns that do not fit are left out, never squeezed to nothing (``--json`` has everything).

On a pipe (or a file) the table is printed at its natural width: every column, every cell in
full, whatever ``COLUMNS`` says, so ``ctagg status | grep`` and ``| less -S`` see it all.

rich is imported when a table is printed, and nothing heavier than ``typing`` when a command
module loads (``ctagg --help`` stays light: a NamedTuple, not a dataclass).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from rich.console import Console

ELLIPSIS = "…"


class Column(NamedTuple):
    """``priority``: lower is more important (kept first when the terminal is narrow).
    ``min_width``: narrowest useful width (a column that cannot have it is left out).
    ``wrap``: the cell wraps onto more lines instead of being elided (problems, details).
    ``elide``: False for values that must be read whole (ids, counts, times): the column is
    shown at its natural width or not at all."""

    header: str
    priority: int
    min_width: int = 4
    max_width: int | None = None
    justify: Literal["left", "right"] = "left"
    wrap: bool = False
    elide: bool = True


def elide_middle(text: str, width: int) -> str:
    """``text`` shortened to ``width`` cells with an ellipsis in the middle."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    keep = width - 1
    head = (keep + 1) // 2
    tail = keep - head
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")


def esc(text: str) -> str:
    """Data (an error message, a key) as a cell: its brackets are not markup."""
    from rich.markup import escape

    return escape(text)


def _plain(cell: str) -> str:
    from rich.text import Text

    return Text.from_markup(cell).plain


def _natural(col: Column, cells: Sequence[str]) -> int:
    lines = [line for c in cells for line in (_plain(c).splitlines() or [""])]
    width = max([len(col.header), *(len(line) for line in lines)])
    return min(width, col.max_width) if col.max_width else width


def fit(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> list[int | None]:
    """The width of each column on a terminal ``width`` cells wide (None: left out)."""
    natural = [_natural(c, [r[i] for r in rows]) for i, c in enumerate(columns)]
    floor = [
        min(n, max(c.min_width, 1)) if c.elide or c.wrap else n
        for c, n in zip(columns, natural, strict=True)
    ]
    order = sorted(range(len(columns)), key=lambda i: (columns[i].priority, i))
    chosen: list[int] = []
    used = 1  # the left border
    for i in order:
        need = floor[i] + 3  # padding and the separator
        if used + need <= width:
            chosen.append(i)
            used += need
    widths: list[int | None] = [None] * len(columns)
    for i in chosen:
        widths[i] = floor[i]
    room = width - used
    for i in chosen:  # the room left widens columns in priority order
        w = widths[i]
        assert w is not None
        grow = min(room, natural[i] - w)
        widths[i] = w + grow
        room -= grow
    return widths


def print_table(
    console: Console,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
) -> None:
    """Print ``rows`` (cells may carry rich markup) fitted to the console (see the module)."""
    from rich.table import Table
    from rich.text import Text

    if console.is_terminal:
        widths = fit(columns, rows, console.width)
    else:
        widths = [_natural(c, [r[i] for r in rows]) for i, c in enumerate(columns)]
    shown = [i for i, w in enumerate(widths) if w is not None]
    table = Table()
    for i in shown:
        col, w = columns[i], widths[i]
        table.add_column(
            col.header if len(col.header) <= (w or 0) else elide_middle(col.header, w or 0),
            justify=col.justify,
            no_wrap=not col.wrap,
            min_width=w,
            max_width=w,
            overflow="fold" if col.wrap else "ellipsis",
        )
    for row in rows:
        cells = []
        for i in shown:
            w, cell = widths[i] or 0, row[i]
            if columns[i].wrap:
                cells.append(Text.from_markup(cell))
                continue
            text = Text.from_markup(cell)
            if text.cell_len > w:  # keep both ends of a long name
                text = Text(elide_middle(text.plain, w), style=text.style)
            cells.append(text)
        table.add_row(*cells)
    if title:
        console.print(title, markup=False, highlight=False)
    if console.is_terminal:
        console.print(table)
        return
    # a pipe: as wide as the table is, never cut to the terminal's (or 80) columns
    width = console.width
    console.width = max(width, _table_width(widths, shown))
    try:
        console.print(table)
    finally:
        console.width = width


def _table_width(widths: Sequence[int | None], shown: Sequence[int]) -> int:
    return sum(widths[i] or 0 for i in shown) + 3 * len(shown) + 1


def console_for(out: IO[str] | None = None) -> Console:
    """A console writing to ``out`` (stdout): colours and fitting on a terminal only."""
    from rich.console import Console

    return Console(file=out, soft_wrap=True, highlight=False)
