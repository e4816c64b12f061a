"""Receipt field heuristics: merchant, date, total, currency and line items from OCR rows.

The rules work on printed rows (``OcrResult.rows()`` from :mod:`tools.vision.ocr`) and use the
amount/date parsers of :mod:`tools.vision.parsing`: "the amount on the row that says SUMME",
"the name above the street address".

The extraction is heuristic. Every field it cannot read with reasonable evidence is left
``None`` and named in ``ReceiptFields.unreadable`` instead of being guessed, so a model that
answers from these fields can say "the total could not be read" rather than invent one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from statistics import median
from typing import Final

from tools.vision.ocr import OcrLine, OcrResult, join_row
from tools.vision.parsing import AMOUNT_RE, TIME_RE, find_amounts, find_dates, fold, format_amount


@dataclass
class ReceiptFields:
    """Fields read from a receipt; ``None`` means "could not be read", never "absent"."""

    merchant: str | None
    date: str | None
    total: str | None
    currency: str | None
    line_items: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def as_prompt_text(self, max_items: int = 30) -> str:
        """Compact block for an LLM prompt that states plainly what could not be read."""
        total = None if self.total is None else f"{self.total} {self.currency or ''}".strip()
        lines = [
            "Receipt fields read by offline OCR (OCR can misread characters):",
            f"- merchant: {self.merchant or 'UNREADABLE'}",
            f"- date: {self.date or 'UNREADABLE'}",
            f"- total: {total or 'UNREADABLE'}",
            f"- currency: {self.currency or 'UNREADABLE'}",
        ]
        if self.line_items:
            lines.append(f"- line items ({len(self.line_items)}):")
            lines.extend(f"  - {desc}: {amount}" for desc, amount in self.line_items[:max_items])
            if len(self.line_items) > max_items:
                lines.append(f"  - ... and {len(self.line_items) - max_items} more")
        else:
            lines.append("- line items: UNREADABLE")
        if self.unreadable:
            lines.append(
                f"Could not be read: {', '.join(self.unreadable)}. Do not guess these values; "
                "tell the user they could not be read from the image."
            )
        return "\n".join(lines)


@dataclass
class _Row:
    """A printed row with the derived facts the rules need (computed once)."""

    index: int
    lines: list[OcrLine]
    text: str
    folded: str
    amounts: list[Decimal]
    height: float
    score: float

    @property
    def y0(self) -> float:
        return min(ln.box[1] for ln in self.lines)

    @property
    def y1(self) -> float:
        return max(ln.box[3] for ln in self.lines)


def _make_rows(ocr: OcrResult) -> list[_Row]:
    rows = []
    for i, group in enumerate(ocr.rows()):
        text = join_row(group)
        rows.append(
            _Row(
                index=i,
                lines=group,
                text=text,
                folded=fold(text),
                amounts=find_amounts(text),
                height=median(ln.height for ln in group),
                score=min(ln.score for ln in group),
            )
        )
    return rows


def extract_receipt_fields(ocr: OcrResult) -> ReceiptFields:
    """Read merchant, date, total, currency and line items from an OCR'd receipt."""
    rows = _make_rows(ocr)
    currency = _find_currency(rows)
    total_row, total = _find_total(rows)
    merchant = _find_merchant(rows)
    when = _find_date(rows, day_first=currency != "USD")
    items = _find_line_items(rows, total_row)
    fields = ReceiptFields(
        merchant=merchant,
        date=when,
        total=format_amount(total) if total is not None else None,
        currency=currency,
        line_items=items,
    )
    fields.unreadable = [
        name for name in ("merchant", "date", "total", "currency") if getattr(fields, name) is None
    ] + ([] if items else ["line_items"])
    return fields


# ---- total

# Explicit totals. \b keeps "Zwischensumme"/"Subtotal" out ("summe"/"total" mid-word).
_TOTAL_STRONG: Final = re.compile(
    r"\b(zu\s*zahlen|summe|total|gesamt\w*|endbetrag|endsumme|zahlbetrag|rechnungsbetrag"
    r"|amount\s+due|balance\s+due|to\s+pay)\b"
)
# Card/payment lines: they repeat the total on almost every receipt paid by card.
_TOTAL_PAYMENT: Final = re.compile(
    r"(ec[\s.-]*cash|ec[\s.-]*karte|girocard|kreditkarte|debitkarte|kartenzahlung|mastercard"
    r"|\bvisa\b|maestro|\bamex\b|lastschrift|\bbetrag\b|\bpaid\b|\bcard\b)"
)
# Cash handed over is >= the total; only useful together with the change row.
_CASH_GIVEN: Final = re.compile(r"\b(bar|bargeld|gegeben|cash|tendered)\b")
_CHANGE: Final = re.compile(r"(ruckgeld|wechselgeld|zuruck|\bchange\b)")
# Rows that carry amounts other than the total even though a keyword matches
# ("MwSt-Betrag", "Summe Rabatt", "Netto", "PAYBACK Punkte"...).
_NOT_TOTAL: Final = re.compile(
    r"(mwst|mw\.\s?st|\bust\b|netto|steuer|\btax\b|\bvat\b|zwischensumme|sub\s*total"
    r"|ruckgeld|wechselgeld|zuruck|\bchange\b|rabatt|ersparnis|gespart|saving|discount"
    r"|punkte|points)"
)
# A row that is nothing but currency + amount ("EUR 152,00" on the card slip).
_CURRENCY_ONLY_ROW: Final = re.compile(r"^\s*(eur|euro|€|usd|\$|gbp|£|chf)\s*[-\d.,' ]+\s*$")


def _find_total(rows: Sequence[_Row]) -> tuple[_Row | None, Decimal | None]:
    """The amount due, by the strongest evidence available.

    1. the biggest amount on a row with an explicit total keyword (SUMME, TOTAL, Zu zahlen,
       Gesamt...); the biggest, because such rows may also carry net and tax columns;
    2. else the biggest amount on a card-payment row or a bare "EUR 12,34" row;
    3. else the biggest amount printed at least twice (the total recurs in the payment
       line and the VAT table, while item prices rarely do at that size);
    4. else cash given minus change, when both rows are present.
    Otherwise None: a single un-labelled big number is not evidence of a total.
    Returns (the first row of the chosen kind, amount) so items can stop above it.
    """
    strong = [r for r in rows if _TOTAL_STRONG.search(r.folded) and not _NOT_TOTAL.search(r.folded)]
    anchor = strong[0] if strong else None
    best = _biggest(strong)
    if best is not None:
        return anchor, best
    payment = [
        r
        for r in rows
        if (_TOTAL_PAYMENT.search(r.folded) or _CURRENCY_ONLY_ROW.match(r.folded)) and not _NOT_TOTAL.search(r.folded)
    ]
    best = _biggest(payment)
    if best is not None:
        return anchor or payment[0], best
    repeated = _biggest_repeated(rows)
    if repeated is not None:
        return anchor, repeated
    return anchor, _cash_minus_change(rows)


def _biggest(rows: Iterable[_Row]) -> Decimal | None:
    values = [a for r in rows for a in r.amounts if a > 0]
    return max(values) if values else None


def _biggest_repeated(rows: Sequence[_Row]) -> Decimal | None:
    counts = Counter(a for r in rows for a in r.amounts if a > 0)
    repeated = [a for a, n in counts.items() if n >= 2]
    return max(repeated) if repeated else None


def _cash_minus_change(rows: Sequence[_Row]) -> Decimal | None:
    for i, row in enumerate(rows):
        if not (_CASH_GIVEN.search(row.folded) and row.amounts):
            continue
        for nxt in rows[i + 1 : i + 3]:
            if _CHANGE.search(nxt.folded) and nxt.amounts:
                total = max(row.amounts) - abs(nxt.amounts[-1])
                return total if total > 0 else None
    return None


# ---- currency

_CURRENCY_TOKENS: Final = (
    (re.compile(r"(?<![a-z])euro?(?![a-z])|€"), "EUR"),
    (re.compile(r"(?<![a-z])usd(?![a-z])|us\$"), "USD"),
    (re.compile(r"(?<![a-z])gbp(?![a-z])|£"), "GBP"),
    (re.compile(r"(?<![a-z])chf(?![a-z])"), "CHF"),
    (re.compile(r"(?<![a-z])(jpy|yen)(?![a-z])|¥"), "JPY"),
    (re.compile(r"(?<![a-z])(pln|zl)(?![a-z])"), "PLN"),
    (re.compile(r"(?<![a-z])(sek|nok|dkk|czk|huf|cad|aud)(?![a-z])"), None),
    # A bare "$" is read as USD; CAD/AUD receipts usually also print their code.
    (re.compile(r"(?<![a-z])\$(?=\s?\d)|(?<=\d)\s?\$"), "USD"),
)


def _find_currency(rows: Sequence[_Row]) -> str | None:
    """The most frequent currency code/symbol on the receipt."""
    counts: Counter[str] = Counter()
    for row in rows:
        for pattern, code in _CURRENCY_TOKENS:
            for m in pattern.finditer(row.folded):
                counts[code or m.group(1).upper()] += 1
    return counts.most_common(1)[0][0] if counts else None


# ---- date

_DATE_KEYWORD: Final = re.compile(r"(datum|date|\bdat\.)")
# Dates that are not the purchase date: coupon validity, card expiry, best-before.
_OTHER_DATE: Final = re.compile(r"(gultig|valid|expir|ablauf|\bmhd\b|best before|haltbar|\bbis\b)")


def _find_date(rows: Sequence[_Row], *, day_first: bool) -> str | None:
    """The purchase date: prefer a row labelled Datum/Date, then a row with a time of day.

    Receipts also print other dates (best-before, coupon validity, campaign text); those
    rarely carry a time or a "Datum" label, and rows saying "gültig bis"/"valid until"/
    "MHD" rank last. Ties go to the date printed most often, then to the first one.
    """
    candidates: list[tuple[int, int, str]] = []
    for row in rows:
        if _OTHER_DATE.search(row.folded):
            rank = -1
        elif _DATE_KEYWORD.search(row.folded):
            rank = 2
        else:
            rank = 1 if TIME_RE.search(row.folded) else 0
        candidates.extend((rank, row.index, iso) for iso in find_dates(row.text, day_first=day_first))
    if not candidates:
        return None
    counts = Counter(iso for _, _, iso in candidates)
    best = max(candidates, key=lambda c: (c[0], counts[c[2]], -c[1]))
    return best[2]


# ---- merchant

_LEGAL_FORM: Final = re.compile(
    r"(gmbh|\bkgaa\b|\bltd\b|\blimited\b|\binc\b|\bllc\b|\bplc\b|\be\.\s?k\.|\bohg\b)"
    r"|(?-i:\b(?:AG|KG|SE|UG|BV|NV|S\.A\.|B\.V\.)\b)",
    re.IGNORECASE,
)
_STREET: Final = re.compile(
    r"((strasse|strabe|strase|str\b\.?|weg|platz|allee|gasse|ring|damm|chaussee|ufer)[\s.,-]*\d)"
    r"|(^\d+\s+\w+.*\b(street|st|road|rd|avenue|ave|lane|blvd|drive)\b)"
)
_POSTCODE_CITY: Final = re.compile(r"^\s*(d-)?\d{4,5}\s*[a-z]")
_PHONE: Final = re.compile(r"(\b(tel|fax|phone|telefon|fon)\b|\+\d|\d[\d /-]{6,}\d)")
_NOT_A_NAME: Final = re.compile(
    r"(www|http|@|\bust\b|\buid\b|steuer|filiale|kasse|\bbon\b|beleg|quittung|rechnung"
    r"|receipt|invoice|offnungszeit|opening|willkommen|welcome|uhr\b)"
)
_DOMAIN: Final = re.compile(r"(?:www\.)?([a-z][a-z0-9-]{2,})\.(?:de|com|at|ch|eu|net|co\.uk|fr|nl|it)\b")
# OCR of logos often yields case soup like "AdLbDneI"; real names rarely switch from lower
# to upper case inside a word more than once ("McDonald's" does it once).
_CASE_FLIP: Final = re.compile(r"[a-z][A-Z]")
MIN_NAME_SCORE: Final = 0.8
LOGO_HEIGHT_RATIO: Final = 1.3
MIN_ADDRESS_NEIGHBOUR_SCORE: Final = 0.85


def _find_merchant(rows: Sequence[_Row]) -> str | None:
    """The shop name, from the most specific evidence available.

    1. a company line with a legal form (GmbH, AG, Ltd...) in the header, i.e. above the
       first priced row: "real GmbH" -> "real";
    2. the logo: the tallest of the first three header rows, if printed at least 1.3x the
       receipt's typical text height and read cleanly ("ROLLER");
    3. the first row, if it reads cleanly and is not small print (slogans are), joined
       with a second line of the same size ("DELPHIN" / "APOTHEKE");
    4. the clean name-like row directly above the street address or postcode, which is
       where receipts put the store name when adverts fill the top;
    5. a company line with a legal form anywhere (the footer: "Aldi GmbH & Co. KG");
    6. the shop's web domain ("www.roller.de" -> "roller").
    "Reads cleanly" = OCR confidence >= 0.8, mostly letters, not an address, phone, date
    or boilerplate. Otherwise None: a wrong merchant is worse than "unreadable".
    """
    header = _header_rows(rows)
    typical = median(r.height for r in rows) if rows else 0.0
    for finder in (
        lambda: _legal_name(header),
        lambda: _logo_name(header, typical),
        lambda: _top_name(header, typical),
        lambda: _name_above_address(header),
        lambda: _legal_name(rows),
        lambda: _domain_name(rows),
    ):
        name = finder()
        if name:
            return _fix_name_digits(name)
    return None


def _header_rows(rows: Sequence[_Row]) -> list[_Row]:
    """Rows above the first row with a price (where name and address are printed)."""
    for i, row in enumerate(rows):
        if row.amounts:
            return list(rows[:i])
    return list(rows)


def _legal_name(rows: Iterable[_Row]) -> str | None:
    for row in rows:
        m = _LEGAL_FORM.search(row.text)
        if not m:
            continue
        name = re.sub(r"[\s,&+-]*(co\.?)?[\s,&+-]*$", "", row.text[: m.start()], flags=re.I).strip()
        name = re.sub(r"^[^A-Za-z0-9]+", "", name)
        if _is_name_like(name):
            return name
    return None


def _logo_name(header: Sequence[_Row], typical_height: float) -> str | None:
    top = header[:3]
    if not top or typical_height <= 0:
        return None
    tallest = max(top, key=lambda r: r.height)
    if tallest.height < LOGO_HEIGHT_RATIO * typical_height:
        return None
    return _name_text(tallest) if _is_clean_name(tallest, MIN_NAME_SCORE) else None


def _top_name(header: Sequence[_Row], typical_height: float) -> str | None:
    if not header:
        return None
    first = header[0]
    if first.height < typical_height or not _is_clean_name(first, MIN_NAME_SCORE):
        return None
    name = _name_text(first)
    if len(header) > 1:
        second = header[1]
        similar = 0.8 <= second.height / first.height <= 1.25
        close = second.y0 - first.y1 < first.height
        if similar and close and _is_clean_name(second, MIN_NAME_SCORE):
            name = f"{name} {_name_text(second)}"
    return name


def _name_text(row: _Row) -> str:
    """The row's name-like boxes only: drops logo specks such as "9M" beside "LIDL"."""
    parts = [ln.text for ln in row.lines if _is_name_like(ln.text)]
    return " ".join(parts) if parts else row.text


def _fix_name_digits(name: str) -> str:
    """Undo the usual digit-for-letter misreads inside words: "A1di" -> "Aldi"."""
    name = re.sub(r"(?<=[A-Za-z])1(?=[a-z])", "l", name)
    return re.sub(r"(?<=[A-Za-z])0(?=[a-z])", "o", name)


def _name_above_address(header: Sequence[_Row]) -> str | None:
    for i, row in enumerate(header):
        if i > 0 and (_STREET.search(row.folded) or _POSTCODE_CITY.search(row.folded)):
            above = header[i - 1]
            return _name_text(above) if _is_clean_name(above, MIN_ADDRESS_NEIGHBOUR_SCORE) else None
    return None


def _domain_name(rows: Iterable[_Row]) -> str | None:
    for row in rows:
        m = _DOMAIN.search(row.folded.replace(" ", ""))
        if m:
            return m.group(1)
    return None


def _is_clean_name(row: _Row, min_score: float) -> bool:
    return (
        row.score >= min_score
        and not row.amounts
        and _is_name_like(row.text)
        and not _STREET.search(row.folded)
        and not _POSTCODE_CITY.search(row.folded)
        and not _PHONE.search(row.folded)
        and not _NOT_A_NAME.search(row.folded)
        and not find_dates(row.text)
    )


def _is_name_like(text: str) -> bool:
    """Mostly letters, at least two of them, no long digit runs, and not OCR case soup."""
    compact = re.sub(r"\s+", "", text)
    if re.search(r"\d{3}", compact):
        return False
    letters = sum(c.isalpha() for c in compact)
    if letters < 2 or letters / max(1, len(compact)) < 0.6:
        return False
    return len(_CASE_FLIP.findall(text)) < 2


# ---- line items

# Markers of a quantity/weight detail row: "2 x", "2Rolle x", "0,162 kg x 1,15 EUR/kg".
_QTY_MARK: Final = re.compile(r"(\d\s*[x*]|[x*]\s*$|\bx\b|\*|kg|stk)")
_NOT_AN_ITEM: Final = re.compile(r"(einzelpreis|stuckpreis|unit\s*price|posten|anzahl|artikel:)")


def _find_line_items(rows: Sequence[_Row], total_row: _Row | None) -> list[tuple[str, str]]:
    """(description, amount) for priced rows between the header and the total row.

    The price is the row's right-most amount; a name row without a price takes the price
    from a following quantity/weight detail row ("BANANEN" / "0,158 kg x 1,19 EUR/kg 0,19").
    """
    start = len(_header_rows(rows))
    end = total_row.index if total_row is not None else len(rows)
    items: list[tuple[str, str]] = []
    pending: str | None = None
    for row in rows[start:end]:
        if _TOTAL_STRONG.search(row.folded) or _NOT_TOTAL.search(row.folded) or _NOT_AN_ITEM.search(row.folded):
            pending = None
            continue
        left = _text_left_of_last_amount(row)
        if not row.amounts:
            pending = left if _is_name_like(left) else None
        elif _is_detail(left):
            if pending:
                items.append((pending, format_amount(row.amounts[-1])))
            pending = None
        else:
            items.append((left, format_amount(row.amounts[-1])))
            pending = None
    return items


def _text_left_of_last_amount(row: _Row) -> str:
    matches = list(AMOUNT_RE.finditer(row.text))
    text = row.text[: matches[-1].start()] if matches else row.text
    text = _TRAILING_CURRENCY.sub("", text)
    return text.strip(" *-:")


_TRAILING_CURRENCY: Final = re.compile(r"\s*(eur|euro|usd|gbp|chf|€|\$|£)\s*$", re.IGNORECASE)


def _is_detail(left: str) -> bool:
    """A quantity/weight row ("2x", "0,162 kg x 1,15 EUR/kg") rather than an item name."""
    letters = sum(c.isalpha() for c in left)
    if letters < 3:
        return True
    return bool(re.match(r"\s*\d", left)) and bool(_QTY_MARK.search(fold(left)))
