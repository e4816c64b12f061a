"""Assertions that several test modules share (no fixtures, no fakes: those live in conftest/fakes)."""

from __future__ import annotations

import re


def has_number(text: str, n: int | str) -> bool:
    """Does ``text`` state the whole number ``n`` (5, but not 59, 2025 or 5.5)?"""
    return re.search(rf"(?<![\d.,]){re.escape(str(n))}(?![\d]|[.,]\d)", text) is not None
