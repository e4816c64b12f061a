"""Amount and date parsing for OCR'd text: pure text functions, no OCR engine, no layout.

``find_amounts``/``parse_amount``/``format_amount`` read printed money amounts ("24,23",
"1.234,56 EUR", "-2,84"); ``find_dates``/``normalise_date`` read calendar dates in the usual
receipt formats as ISO strings; ``fold`` is the case/umlaut folding that keyword rules match on.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Final

# --------------------------------------------------------------------------- amounts

# An amount with exactly two decimals, optional thousands groups and sign. Not preceded by
# a digit/separator and not followed by another digit group: "27.02.2020" and "0,162 kg"
# are not amounts; "1,79A" (tax code glued on), "48.77*" and "-2,84" are.
AMOUNT_RE: Final = re.compile(
    r"(?<![\d.,])(?P<neg>-\s?)?(?P<int>\d{1,3}(?:[.,' ]\d{3})+|\d+)[.,](?P<dec>\d{2})"
    r"(?![.,]?\d)(?!\s?%)(?P<trail>-(?!\d))?"
)


def find_amounts(text: str) -> list[Decimal]:
    """All money amounts (two decimals, comma or point) in ``text``, left to right."""
    out: list[Decimal] = []
    for m in AMOUNT_RE.finditer(unicodedata.normalize("NFKC", text)):
        value = _amount_from_match(m)
        if value is not None:
            out.append(value)
    return out


def _amount_from_match(m: re.Match[str]) -> Decimal | None:
    digits = re.sub(r"[.,' ]", "", m.group("int"))
    try:
        value = Decimal(f"{digits}.{m.group('dec')}")
    except InvalidOperation:  # pragma: no cover - the regex only admits digits
        return None
    return -value if (m.group("neg") or m.group("trail")) else value


def parse_amount(text: str) -> str | None:
    """Normalise one printed amount ("24,23", "1.234,56 EUR", "€ 3.50") to "24.23".

    Returns None if ``text`` holds no amount or several different ones (ambiguous).
    """
    values = find_amounts(text)
    if not values or len(set(values)) > 1:
        return None
    return format_amount(values[0])


def format_amount(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01")))


# --------------------------------------------------------------------------- dates

_MONTHS: Final = {
    "jan": 1,
    "januar": 1,
    "january": 1,
    "feb": 2,
    "februar": 2,
    "february": 2,
    "mar": 3,
    "marz": 3,
    "maerz": 3,
    "march": 3,
    "apr": 4,
    "april": 4,
    "mai": 5,
    "may": 5,
    "jun": 6,
    "juni": 6,
    "june": 6,
    "jul": 7,
    "juli": 7,
    "july": 7,
    "aug": 8,
    "august": 8,
    "sep": 9,
    "sept": 9,
    "september": 9,
    "okt": 10,
    "oct": 10,
    "oktober": 10,
    "october": 10,
    "nov": 11,
    "november": 11,
    "dez": 12,
    "dec": 12,
    "dezember": 12,
    "december": 12,
}
_MONTH_ALT: Final = "|".join(sorted(_MONTHS, key=len, reverse=True))

_ISO_DATE_RE: Final = re.compile(r"(?<!\d)(\d{4})([-./])(\d{1,2})\2(\d{1,2})(?!\d)")
# Day-month-year with one separator kind. The 4-digit year may be glued to a time
# ("06.04.202014:43" = 06.04.2020 14:43) and a 2-digit year may be glued to the hour
# ("07.04.2014:38" = 07.04.20 14:38; resolved in _numeric_dates).
_DMY_RE: Final = re.compile(r"(?<!\d)(\d{1,2})([./-])(\d{1,2})\2(?:(\d{4})(?=\d{1,2}:\d{2})|(\d{4}|\d{2})(?!\d))")
_TEXT_DMY_RE: Final = re.compile(rf"(?<!\d)(\d{{1,2}})\.?\s*({_MONTH_ALT})\.?\s*(\d{{4}})(?!\d)")
_TEXT_MDY_RE: Final = re.compile(rf"(?<![a-z])({_MONTH_ALT})\.?\s*(\d{{1,2}}),?\s*(\d{{4}})(?!\d)")
TIME_RE: Final = re.compile(r"(?<!\d)\d{1,2}:\d{2}(?!\d)")
MIN_YEAR: Final = 1990


def find_dates(text: str, *, day_first: bool = True) -> list[str]:
    """All plausible calendar dates in ``text`` as ISO strings, left to right.

    Handles 02.03.20, 02.03.2020, 2.3.2020, 2020-03-02, 02/03/2020, 02-03-2020,
    "2. März 2020", "March 2, 2020". Slash/dash dates are read day-first unless
    ``day_first`` is False or the day-first reading is impossible (13/25/2020).
    Impossible dates (31.02.) and years before 1990 or after next year are dropped.
    """
    folded = fold(text)
    found: list[tuple[int, str]] = []
    for m in _ISO_DATE_RE.finditer(folded):
        iso = _make_date(int(m.group(1)), int(m.group(3)), int(m.group(4)))
        if iso:
            found.append((m.start(), iso))
    found.extend(_numeric_dates(folded, day_first))
    for m in _TEXT_DMY_RE.finditer(folded):
        iso = _make_date(int(m.group(3)), _MONTHS[m.group(2)], int(m.group(1)))
        if iso:
            found.append((m.start(), iso))
    for m in _TEXT_MDY_RE.finditer(folded):
        iso = _make_date(int(m.group(3)), _MONTHS[m.group(1)], int(m.group(2)))
        if iso:
            found.append((m.start(), iso))
    return [iso for _, iso in sorted(found)]


def _numeric_dates(folded: str, day_first: bool) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for m in _DMY_RE.finditer(folded):
        a, sep, b = int(m.group(1)), m.group(2), int(m.group(3))
        year_text = m.group(4) or m.group(5)
        if m.group(5) and len(year_text) == 4 and folded[m.end() : m.end() + 1] == ":":
            year_text = year_text[:2]  # "07.04.2014:38": the year's last digits are the hour
        year = int(year_text)
        if len(year_text) == 2:
            year += 2000 if year < 70 else 1900
        first_is_day = day_first or sep == "."  # a dotted date is always day-first
        day, month = (a, b) if first_is_day else (b, a)
        iso = _make_date(year, month, day) or _make_date(year, day, month)
        if iso:
            out.append((m.start(), iso))
    return out


def _make_date(year: int, month: int, day: int) -> str | None:
    if not (MIN_YEAR <= year <= date.today().year + 1):
        return None
    try:
        return date(year, month, day).isoformat()
    except ValueError:
        return None


def normalise_date(text: str, *, day_first: bool = True) -> str | None:
    """ISO date for a string holding exactly one date (None if none or several differ)."""
    dates = set(find_dates(text, day_first=day_first))
    return dates.pop() if len(dates) == 1 else None


# --------------------------------------------------------------------------- text helpers


def fold(text: str) -> str:
    """Lower-case, NFKC, umlauts folded (ä->a, ß->ss): OCR often drops the dots anyway."""
    # "β" (Greek beta) is how the recogniser often reads a printed "ß".
    t = unicodedata.normalize("NFKC", text).lower().replace("ß", "ss").replace("β", "ss")
    t = unicodedata.normalize("NFKD", t)
    return "".join(c for c in t if not unicodedata.combining(c))
