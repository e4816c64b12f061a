"""What a query returned and how its values are shown: :class:`QueryResult`, the per-cell byte cap
applied while rows are fetched, Markdown tables for answers and prompts, and SQL literals for
sample values in schema descriptions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["QueryResult", "cap_cell", "sql_literal"]

_SAMPLE_VALUE_CHARS = 20  # keeps '2021-01-01 00:00:00' whole
_MARKDOWN_CELL_CHARS = 60


@dataclass(frozen=True)
class QueryResult:
    """What a query returned: at most ``max_rows`` rows, and whether more existed."""

    sql: str  # the SQL actually executed (normalised by the guard), to show the work
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    elapsed_ms: float
    # values shortened or replaced by a placeholder (blobs, text over the per-cell cap)
    cut_cells: int = 0
    # rows stopped because the result reached its byte cap (``truncated`` is then True too)
    size_capped: bool = False

    def cut_note(self) -> str:
        """One sentence saying how the result was cut to its byte caps; "" when it was not."""
        parts = []
        if self.cut_cells:
            parts.append(f"{self.cut_cells} value{'s' if self.cut_cells != 1 else ''} too large to show "
                         "(binary data or long text) were shortened")
        if self.size_capped:
            parts.append(f"only the first {len(self.rows)} row{'s' if len(self.rows) != 1 else ''} fit "
                         "the result size limit")
        return f"(The result was cut: {'; '.join(parts)}.)" if parts else ""

    def as_markdown(self, max_rows: int = 10) -> str:
        """A small Markdown table for an answer or a prompt, with a note when rows are cut."""
        if not self.columns:
            return "(no columns)"
        lines = [
            "| " + " | ".join(_markdown_cell(c) for c in self.columns) + " |",
            "|" + "---|" * len(self.columns),
        ]
        shown = self.rows[:max_rows]
        lines += ["| " + " | ".join(_markdown_cell(v) for v in row) + " |" for row in shown]
        if not self.rows:
            lines.append("_(no rows)_")
        elif len(shown) < len(self.rows) or self.truncated:
            total = f"more than {len(self.rows)}" if self.truncated else str(len(self.rows))
            lines.append(f"_{len(shown)} of {total} rows shown_")
        return "\n".join(lines)


def _format_value(value: Any, limit: int) -> str:
    """Render one value compactly: NULL, numbers as-is, text truncated to ``limit`` chars."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".10g")
    if isinstance(value, (int, Decimal)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        text = value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
    else:
        text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cap_cell(value: Any, limit: int) -> tuple[Any, int, bool]:
    """``(value to keep, its size in bytes, whether it was cut)`` under a per-cell byte cap.

    A blob is never kept: it becomes ``<BLOB n bytes>``. Text over ``limit`` bytes (UTF-8) is
    cut at ``limit`` and says how long it was. Everything else is kept as is (small)."""
    if isinstance(value, memoryview):
        return f"<BLOB {value.nbytes} bytes>", 24, True
    if isinstance(value, (bytes, bytearray)):
        return f"<BLOB {len(value)} bytes>", 24, True
    if isinstance(value, str):
        if len(value) * 4 <= limit:  # cannot be over the cap, whatever the characters
            return value, len(value), False
        encoded = value.encode("utf-8", "surrogatepass")
        if len(encoded) <= limit:
            return value, len(encoded), False
        head = encoded[:limit].decode("utf-8", "ignore")
        return f"{head}… [cut: {len(encoded)} bytes]", limit + 32, True
    return value, 16, False


def _markdown_cell(value: Any) -> str:
    return _format_value(value, _MARKDOWN_CELL_CHARS).replace("|", "\\|")


def sql_literal(value: Any) -> str:
    """Sample values as SQL literals, so the model copies the right quoting into WHERE clauses."""
    text = _format_value(value, _SAMPLE_VALUE_CHARS)
    if value is None or isinstance(value, (bool, int, float, Decimal)):
        return text
    return "'" + text.replace("'", "''") + "'"
