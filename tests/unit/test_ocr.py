"""Receipt OCR: reading order, amount/date parsing, field extraction, one real OCR run."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SHARED_DATA, require_shared
from tools.vision.ocr import OcrLine, OcrResult, read_image
from tools.vision.parsing import find_amounts, find_dates, normalise_date, parse_amount
from tools.vision.receipts import extract_receipt_fields

VISION_DATA = SHARED_DATA / "vision"
RECEIPTS = VISION_DATA / "softmatic_receipts_de"


# Hand-written fixtures: OcrResults built by hand in the shape RapidOCR returns (one box per
# text run, item and price as separate boxes), not recorded OCR output.


def _receipt(rows: list[list[str] | tuple[float, list[str]]], width: float = 900.0) -> OcrResult:
    """Lay rows out top to bottom, 50 px apart, 40 px text; pieces spread across the width.

    A row is a list of texts, or (height_factor, texts) to print it larger (a logo).
    The second piece of each row is set 3 px lower, as real scans never align exactly.
    """
    lines: list[OcrLine] = []
    y = 20.0
    for row in rows:
        factor, texts = row if isinstance(row, tuple) else (1.0, row)
        height = 40.0 * factor
        step = width / max(1, len(texts))
        for i, text in enumerate(texts):
            x0 = 10.0 + i * step
            dy = 3.0 if i % 2 else 0.0
            lines.append(OcrLine(text, (x0, y + dy, x0 + step * 0.6, y + dy + height), 0.97))
        y += height + 10.0
    return OcrResult(lines)


GERMAN_CASH_RECEIPT = _receipt(
    [
        (1.8, ["LIDL"]),
        ["Warburger Straße 130"],
        ["33100 Paderborn"],
        ["EUR"],
        ["Emmentaler Stück 2,59 x2", "5,18 A"],
        ["Bulgur-Kräuter", "0,99 A"],
        ["zu zahlen", "6,17"],
        ["Bar", "10,00"],
        ["Rückgeld", "-3,83"],
        ["MWST%", "MWST+", "Netto", "Brutto"],
        ["A 7%", "0,40", "5,77", "6,17"],
        ["3182", "748433701", "02.03.20", "15:59"],
    ]
)


def test_rows_join_item_and_price_despite_offset() -> None:
    text = GERMAN_CASH_RECEIPT.text().splitlines()
    assert text[0] == "LIDL"
    assert "Bulgur-Kräuter   0,99 A" in text
    assert "zu zahlen   6,17" in text


def test_tall_logo_does_not_swallow_small_line_beside_it() -> None:
    logo = OcrLine("real", (40, 100, 380, 260), 0.99)
    small = OcrLine("real GmbH", (570, 110, 720, 140), 0.95)
    below = OcrLine("33100 Paderborn", (520, 150, 760, 180), 0.95)
    rows = OcrResult([logo, small, below]).rows()
    assert [[ln.text for ln in row] for row in rows] == [["real GmbH"], ["33100 Paderborn"], ["real"]]


def test_extract_german_cash_receipt() -> None:
    fields = extract_receipt_fields(GERMAN_CASH_RECEIPT)
    assert fields.total == "6.17"  # not the 10,00 handed over
    assert fields.date == "2020-03-02"
    assert fields.merchant == "LIDL"
    assert fields.currency == "EUR"
    assert fields.line_items == [("Emmentaler Stück 2,59 x2", "5.18"), ("Bulgur-Kräuter", "0.99")]
    assert fields.unreadable == []


def test_extract_english_receipt_with_legal_name_and_us_date() -> None:
    ocr = _receipt(
        [
            ["Joe's Diner LLC"],
            ["123 Main Street"],
            ["Tel. (555) 123-4567"],
            ["Burger", "$9.50"],
            ["Fries", "$3.00"],
            ["Subtotal", "$12.50"],
            ["Tax", "$1.00"],
            ["TOTAL", "$13.50"],
            ["CASH", "$20.00"],
            ["CHANGE", "$6.50"],
            ["03/14/2021 12:31"],
        ]
    )
    fields = extract_receipt_fields(ocr)
    assert fields.merchant == "Joe's Diner"
    assert fields.total == "13.50"
    assert fields.currency == "USD"
    assert fields.date == "2021-03-14"
    assert fields.line_items == [("Burger", "9.50"), ("Fries", "3.00")]


def test_biggest_amount_on_total_row_wins_over_tax_columns() -> None:
    ocr = _receipt(
        [
            ["Backhaus Müller"],
            ["Brot", "3,10"],
            ["Kuchen", "12,59"],
            ["Zwischensumme", "15,69"],
            ["Summe", "1,61", "14,08", "15,69"],
            ["MwSt-Betrag", "1,61"],
        ]
    )
    assert extract_receipt_fields(ocr).total == "15.69"


def test_total_from_card_line_when_no_total_keyword() -> None:
    ocr = _receipt([["KIOSK AM RING"], ["Zeitung", "2,20"], ["Kaffee", "3,40"], ["girocard", "5,60"]])
    assert extract_receipt_fields(ocr).total == "5.60"


def test_total_from_repeated_amount_when_keyword_row_has_no_amount() -> None:
    # The "Total" label and its amount were split onto different rows by OCR.
    ocr = _receipt(
        [
            ["ROSSMANN"],
            ["27.02.2020 15:56 Kasse 02"],
            ["ZEISS BRILLENPUTZTUCH", "1.95"],
            ["Total"],
            ["Bar", "2.00"],
            ["Rückgeld", "0.05"],
            ["A 19%", "1,64", "0,31", "1,95"],
        ]
    )
    fields = extract_receipt_fields(ocr)
    assert fields.total == "1.95"
    assert fields.date == "2020-02-27"


def test_total_from_cash_minus_change_as_last_resort() -> None:
    ocr = _receipt([["Marktstand"], ["Äpfel", "2,30"], ["Birnen", "1,70"], ["Bar", "5,00"], ["Rückgeld", "1,00"]])
    assert extract_receipt_fields(ocr).total == "4.00"


def test_unreadable_fields_are_reported_not_guessed() -> None:
    ocr = _receipt([["AdLbDneI"], ["Pohlweg 110"], ["33100 Paderborn"], ["WURFELZUCKER", "0,89"], ["TEE", "1,59"]])
    fields = extract_receipt_fields(ocr)
    assert fields.merchant is None  # OCR case soup from a logo is not a name
    assert fields.total is None  # no keyword, nothing repeated: the largest price is no total
    assert fields.date is None
    assert fields.unreadable == ["merchant", "date", "total", "currency"]
    prompt = fields.as_prompt_text()
    assert "- total: UNREADABLE" in prompt
    assert "Could not be read: merchant, date, total, currency." in prompt
    assert "Do not guess" in prompt
    assert "WURFELZUCKER: 0.89" in prompt


def test_prompt_text_lists_values_and_caps_items() -> None:
    items = [[f"ITEM {i}", "1,00"] for i in range(35)]
    fields = extract_receipt_fields(
        _receipt([["REWE Markt GmbH"], *items, ["SUMME EUR", "35,00"], ["01.02.2021 10:00"]])
    )
    prompt = fields.as_prompt_text(max_items=30)
    assert "- merchant: REWE Markt" in prompt
    assert "- total: 35.00 EUR" in prompt
    assert "- date: 2021-02-01" in prompt
    assert "- line items (35):" in prompt
    assert "... and 5 more" in prompt
    assert "Could not be read" not in prompt


def test_merchant_above_address_when_adverts_fill_the_top() -> None:
    ocr = _receipt(
        [
            (0.7, ["FRISCHE EINKAUFEN/GENUSS ERLEBEN"]),
            ["WUNSCHLOS"],
            ["GLÜCKLICH?"],
            ["Marktkauf Lehr"],
            ["Detmolder Str. 4"],
            ["33102 Paderborn"],
            ["Tel. 05251/180420"],
            ["ORANGENSAFT", "1,49"],
            ["SUMME EUR", "1,49"],
        ]
    )
    assert extract_receipt_fields(ocr).merchant == "Marktkauf Lehr"


def test_merchant_from_footer_legal_line_fixes_digit_misreads() -> None:
    ocr = _receipt(
        [["Pohlweg 110"], ["KIWI", "1,49"], ["ZU ZAHLEN EURO", "1,49"], ["A1di GmbH & Co. KG, Schloß Holte"]]
    )
    assert extract_receipt_fields(ocr).merchant == "Aldi"


# --------------------------------------------------------------------------- amounts and dates


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24,23", "24.23"),
        ("24.23", "24.23"),
        ("EUR 5,00", "5.00"),
        ("€3.50", "3.50"),
        ("1.234,56", "1234.56"),
        ("1,234.56", "1234.56"),
        ("1,79A", "1.79"),
        ("48.77*", "48.77"),
        ("-2,84", "-2.84"),
        ("2,84-", "-2.84"),
        ("7,00%", None),  # a VAT rate, not money
        ("27.02.2020", None),  # a date, not money
        ("0,162 kg", None),  # three decimals: a weight
        ("1,99 2,99", None),  # two different amounts: ambiguous
        ("Summe", None),
    ],
)
def test_parse_amount(text: str, expected: str | None) -> None:
    assert parse_amount(text) == expected


def test_find_amounts_in_a_row() -> None:
    assert [str(a) for a in find_amounts("0,162 kgx 1,15 EUR/kg 0,19")] == ["1.15", "0.19"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("02.03.20", "2020-03-02"),
        ("02.03.2020", "2020-03-02"),
        ("2.3.2020", "2020-03-02"),
        ("2020-03-02", "2020-03-02"),
        ("02/03/2020", "2020-03-02"),  # day first by default
        ("12/25/2020", "2020-12-25"),  # day-first impossible: read month first
        ("02-03-2020", "2020-03-02"),
        ("2. März 2020", "2020-03-02"),
        ("March 2, 2020", "2020-03-02"),
        ("Datum23.09.16 14:05 Uhr", "2016-09-23"),
        ("07.04.2014:38", "2020-04-07"),  # "07.04.20" + "14:38" glued together by OCR
        ("06.04.202014:4328753535352", "2020-04-06"),  # 4-digit year glued to the time
        ("31.02.2020", None),
        ("01.01.1890", None),
        ("Tel. 05251/180420", None),
    ],
)
def test_normalise_date(text: str, expected: str | None) -> None:
    assert normalise_date(text) == expected


def test_month_first_when_asked() -> None:
    assert normalise_date("02/03/2020", day_first=False) == "2020-02-03"
    assert normalise_date("02.03.2020", day_first=False) == "2020-03-02"  # dots are always D.M.


def test_validity_date_is_not_the_purchase_date() -> None:
    ocr = _receipt([["Coupon gültig bis 31.12.2020"], ["KIWI", "1,49"], ["SUMME", "1,49"], ["02.03.2020"]])
    assert extract_receipt_fields(ocr).date == "2020-03-02"


def test_find_dates_keeps_reading_order() -> None:
    assert find_dates("Kauf 02.03.2020, gültig bis 31.12.2020") == ["2020-03-02", "2020-12-31"]


# --------------------------------------------------------------------------- real OCR


def test_real_receipt_total_matches_label() -> None:
    """One real scan end to end. pytest-socket blocks the network for the whole test run,
    so this also shows the RapidOCR engine loads from the wheel without any download."""
    require_shared(RECEIPTS / "labels.jsonl")
    labels = [json.loads(line) for line in (RECEIPTS / "labels.jsonl").read_text().splitlines() if line]
    label = next(row for row in labels if row["image"].endswith("lidl_02032020_02_00716.jpg"))
    fields = extract_receipt_fields(read_image((RECEIPTS / label["image"]).read_bytes()))
    assert fields.total == label["total_eur"]
    assert fields.date == "2020-03-02"
    assert fields.currency == "EUR"
