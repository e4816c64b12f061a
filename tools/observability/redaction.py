"""Find personal data and secrets in text, and mask them before the text is kept anywhere.

Logs, traces, the audit trail and recorded cassettes outlive the conversation and are read by
people who are not the customer, so e-mail addresses, phone numbers, payment card numbers and
IBANs are replaced there by ``[email]``, ``[phone]``, ``[card]`` and ``[iban]``, and anything that
looks like a credential by ``[secret]``. The answer shown to the user is never passed through
here: customers still see their own data.

Precision matters as much as recall: a support bot for a music store logs invoice ids, track ids,
prices, dates, durations in milliseconds and SQL all day, and a redactor that turns those into
``[phone]`` makes the logs useless. So every detector is a shape *plus* a check:

* cards need a known issuer prefix, an issuer-valid length and the Luhn checksum;
* IBANs need a known country, that country's exact length and the ISO 13616 mod-97 checksum;
* phones need a phone shape (``+`` and a country code, a North American ``(415) 555-0100``
  shape with valid area and exchange codes, or a European trunk ``0`` prefix) and 9-15 digits;
* secrets need a vendor prefix (``sk-``, ``AKIA``, ``ghp_``...) or a credential-named assignment
  whose value is long and mixes letters and digits.

Detectors run in a fixed order (secrets, e-mails, IBANs, cards, phones) and a later one never
claims characters an earlier one did, so the digits of a card are not also reported as a phone.
``tests/fixtures/redaction_corpus.yaml`` holds the labelled examples these rules are held to.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

PERSONAL_KINDS = ("email", "phone", "card", "iban")
PLACEHOLDERS = {"email": "[email]", "phone": "[phone]", "card": "[card]", "iban": "[iban]"}
SECRET_PLACEHOLDER = "[secret]"


@dataclass(frozen=True)
class Finding:
    """One detected span: ``text[start:end] == self.text``. ``kind`` is a personal-data kind
    (``email``, ``phone``, ``card``, ``iban``) or a secret kind (``openai_key``, ``bearer_token``...)."""

    kind: str
    start: int
    end: int
    text: str


# --- secrets -------------------------------------------------------------------------------------
# Each pattern's group ``v`` is the part to mask (so "Bearer " and "api_key = " stay readable).

_SECRET_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("anthropic_key", re.compile(r"\b(?P<v>sk-ant-[A-Za-z0-9_\-]{20,})")),
    ("openai_key", re.compile(r"(?<![\w-])(?P<v>sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,})")),
    ("aws_access_key", re.compile(r"\b(?P<v>(?:AKIA|ASIA)[0-9A-Z]{16})\b")),
    ("github_token", re.compile(r"\b(?P<v>(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}))")),
    ("slack_token", re.compile(r"\b(?P<v>xox[abposr]-[A-Za-z0-9\-]{10,})")),
    ("bearer_token", re.compile(r"(?i)\bbearer\s+(?P<v>[A-Za-z0-9._~+/\-]{16,}=*)")),
    (
        "api_key_assignment",
        re.compile(
            r"(?i)\b(?:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret|x-api-key)"
            r"[\"']?\s*[:=]\s*[\"']?(?P<v>[A-Za-z0-9_\-./+=]{16,})"
        ),
    ),
)


# Something every pattern above needs (lower-cased: a superset). Text with none of these is not
# searched seven times; most text a turn records (questions, tasks, notes) has none.
_SECRET_HINTS = ("sk-", "akia", "asia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "bearer",
                 "key", "token", "secret")


def _random_looking(value: str) -> bool:
    """A credential value, not an identifier like ``settings.openai_api_key``: letters and digits."""
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def find_secrets(text: str) -> list[Finding]:
    """Spans that look like API keys or bearer tokens, in text order, never overlapping."""
    found: list[Finding] = []
    lowered = text.lower()
    if not any(hint in lowered for hint in _SECRET_HINTS):
        return found
    for kind, pattern in _SECRET_PATTERNS:
        for m in pattern.finditer(text):
            if kind == "api_key_assignment" and not _random_looking(m.group("v")):
                continue
            found.append(Finding(kind, m.start("v"), m.end("v"), m.group("v")))
    return _without_overlaps(found)


def looks_like_secret(text: str) -> list[str]:
    """The kinds of secret found in ``text`` (one entry per occurrence), empty when it looks clean."""
    return [f.kind for f in find_secrets(text)]


# --- e-mail --------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.+\-@])[A-Za-z0-9][A-Za-z0-9._%+\-]*@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)+(?P<tld>[A-Za-z]{2,24})(?![\w\-@])"
)
# "logo@2x.png" is an image name, not an address.
_FILE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff"})


def _emails(text: str) -> Iterator[Finding]:
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        if m.group("tld").lower() not in _FILE_EXTENSIONS:
            yield Finding("email", m.start(), m.end(), m.group())


# --- IBAN ----------------------------------------------------------------------------------------

IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
# A country code, check digits, then alphanumerics, optionally printed in space-separated groups.
_IBAN_CANDIDATE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,32}(?![A-Za-z0-9])")


def iban_is_valid(candidate: str) -> bool:
    """Known country, that country's length, and the ISO 13616 check (the number mod 97 is 1)."""
    iban = candidate.replace(" ", "").upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum():
        return False
    digits = "".join(str(int(c, 36)) for c in iban[4:] + iban[:4])
    return int(digits) % 97 == 1


def _ibans(text: str) -> Iterator[Finding]:
    for m in _IBAN_CANDIDATE.finditer(text):
        # The candidate may have swallowed the next word ("... 7654 32 THANKS"): drop trailing
        # space-separated pieces until what is left checks out.
        pieces = list(re.finditer(r"\S+", m.group()))
        for k in range(len(pieces), 0, -1):
            end = pieces[k - 1].end()
            if iban_is_valid(m.group()[:end]):
                yield Finding("iban", m.start(), m.start() + end, m.group()[:end])
                break


# --- payment cards -------------------------------------------------------------------------------

# (lowest prefix, highest prefix, allowed lengths): Visa, Mastercard, Amex, Discover, Diners, JCB,
# UnionPay, Maestro. A Luhn-valid number with no issuer prefix (a 13-digit millisecond timestamp,
# say) is not a card.
_CARD_ISSUERS: tuple[tuple[str, str, range | tuple[int, ...]], ...] = (
    ("4", "4", (13, 16, 19)),
    ("51", "55", (16,)),
    ("2221", "2720", (16,)),
    ("34", "34", (15,)),
    ("37", "37", (15,)),
    ("6011", "6011", range(16, 20)),
    ("644", "649", range(16, 20)),
    ("65", "65", range(16, 20)),
    ("300", "305", range(14, 20)),
    ("36", "36", range(14, 20)),
    ("38", "39", range(14, 20)),
    ("3528", "3589", range(16, 20)),
    ("62", "62", range(16, 20)),
    ("50", "50", range(13, 20)),
    ("56", "58", range(13, 20)),
    ("63", "63", range(13, 20)),
    ("67", "67", range(13, 20)),
)
# Runs of digit groups joined by single spaces or dashes; windows of these groups are checked.
# Every card has 13 digits in such a run (text without one is not searched).
_CARD_HINT = re.compile(r"\d(?:[ \-]?\d){12}")
_DIGIT_RUN = re.compile(r"(?<![\w.\-/+])\d+(?:[ \-]\d+)*(?!\w)")


def luhn_is_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def card_is_valid(candidate: str) -> bool:
    """13-19 digits, a known issuer prefix with a length that issuer uses, and a valid Luhn sum."""
    digits = re.sub(r"[ \-]", "", candidate)
    if not (13 <= len(digits) <= 19 and digits.isdigit()):
        return False
    issuer = any(
        lo <= digits[: len(lo)] <= hi and len(digits) in lengths for lo, hi, lengths in _CARD_ISSUERS
    )
    return issuer and luhn_is_valid(digits)


def _cards(text: str) -> Iterator[Finding]:
    if not _CARD_HINT.search(text):
        return
    for m in _DIGIT_RUN.finditer(text):
        groups = [(m.start() + g.start(), m.start() + g.end()) for g in re.finditer(r"\d+", m.group())]
        # Windows of consecutive groups holding 13-19 digits, longest first. A grouped number
        # starts with a group of four ("4111 1111 ...", "3782 822463 10005"), which is how
        # "2024 4111 1111 1111 1111" still finds the card after the year.
        windows: list[tuple[int, int]] = []
        for i, (first_start, first_end) in enumerate(groups):
            digits = 0
            for j in range(i, len(groups)):
                digits += groups[j][1] - groups[j][0]
                if digits > 19:
                    break
                if digits >= 13 and (j == i or first_end - first_start == 4):
                    windows.append((first_start, groups[j][1]))
        taken: list[tuple[int, int]] = []
        for start, end in sorted(windows, key=lambda w: w[0] - w[1]):
            if all(end <= s or start >= e for s, e in taken) and card_is_valid(text[start:end]):
                taken.append((start, end))
                yield Finding("card", start, end, text[start:end])


# --- phone numbers -------------------------------------------------------------------------------

_PHONE_SHAPES = (
    # +country code, then groups ("+1 (415) 555-0100", "+49 30 1234567", "+44 (0)20 7946 0958").
    re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .\-]?(?:\(\d{1,5}\)|\d{1,8}))+"),
    # North American: area and exchange codes start with 2-9 ("(415) 555-0100", "1-800-555-0199").
    re.compile(
        r"(?<![\w+.\-/])(?<!\d[ \-])(?:1[ .\-])?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .\-])[2-9]\d{2}[ .\-]\d{4}"
        r"(?!\w)(?![.\-/ ]\d)"
    ),
    # European national, trunk prefix 0 ("030 1234567", "(030) 1234 5678", "020 7946 0958").
    re.compile(
        r"(?<![\w+.\-/])(?<!\d[ \-])(?:\(0[1-9]\d{0,3}\) ?|0[1-9]\d{0,3}[ \-/])\d{2,8}(?:[ \-]\d{2,4}){0,3}"
        r"(?!\w)(?![.\-/ ]\d)"
    ),
)


# Every shape above with the 9 digits a plausible number needs has them apart only by these
# separators (text without such a run is not searched three times).
_PHONE_HINT = re.compile(r"\d(?:[ .\-()/]*\d){8}")


def _trim_phone(candidate: str) -> str:
    """Drop a trailing one-digit group ("+1 415 555 0100 2 times") and an unmatched ")"."""
    while True:
        trimmed = re.sub(r"[ .\-]\(?\d\)?$", "", candidate)
        if trimmed == candidate:
            break
        candidate = trimmed
    if candidate.endswith(")") and candidate.count(")") > candidate.count("("):
        candidate = candidate[:-1]
    return candidate


def _phone_is_plausible(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    compact = not re.search(r"[ .\-()]", candidate)
    return 9 <= len(digits) <= 15 and not (compact and len(digits) < 10)


# An account-like code printed like an IBAN ("NL91 ABNA 0417 1643 01" with a wrong check digit):
# its digit groups are not a phone number.
_IBAN_SHAPE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")


def _phones(text: str) -> Iterator[Finding]:
    if not _PHONE_HINT.search(text):
        return
    codes = [m.span() for m in _IBAN_SHAPE.finditer(text)]
    for shape in _PHONE_SHAPES:
        for m in shape.finditer(text):
            candidate = _trim_phone(m.group())
            start, end = m.start(), m.start() + len(candidate)
            if _phone_is_plausible(candidate) and all(end <= s or start >= e for s, e in codes):
                yield Finding("phone", start, end, candidate)


# --- all together --------------------------------------------------------------------------------

_PERSONAL_DETECTORS: tuple[Callable[[str], Iterator[Finding]], ...] = (_emails, _ibans, _cards, _phones)


def _without_overlaps(findings: list[Finding]) -> list[Finding]:
    """Keep findings in the order given, dropping any that overlaps one already kept; sort by start."""
    kept: list[Finding] = []
    for f in findings:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def find_sensitive(text: str) -> list[Finding]:
    """Secrets and personal data in ``text``, in text order, never overlapping."""
    found = find_secrets(text)
    for detector in _PERSONAL_DETECTORS:
        found += list(detector(text))
    return _without_overlaps(found)


def find_personal_data(text: str) -> list[Finding]:
    """E-mails, phones, cards and IBANs in ``text`` (digits inside a secret are not reported)."""
    return [f for f in find_sensitive(text) if f.kind in PERSONAL_KINDS]


def redact(text: str) -> str:
    """``text`` with personal data replaced by ``[email]``/``[phone]``/``[card]``/``[iban]`` and
    secrets by ``[secret]``; text with neither comes back unchanged (the same object)."""
    findings = find_sensitive(text)
    if not findings:
        return text
    parts: list[str] = []
    pos = 0
    for f in findings:
        parts += [text[pos : f.start], PLACEHOLDERS.get(f.kind, SECRET_PLACEHOLDER)]
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)


def redact_obj(obj: Any, redactor: Callable[[str], str] = redact) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples, strings) with every string redacted,
    keys included; other values (numbers, None, objects) are returned as they are. ``redactor``
    lets a caller add its own masking first (``tools.models.recording`` also masks configured keys)."""
    if isinstance(obj, str):
        return redactor(obj)
    if isinstance(obj, dict):
        return {redact_obj(k, redactor): redact_obj(v, redactor) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_obj(v, redactor) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact_obj(v, redactor) for v in obj)
    return obj


# --- logging -------------------------------------------------------------------------------------


class RedactingFilter(logging.Filter):
    """Redacts a log record in place and lets it through.

    String arguments are redacted one by one, so formatters that read ``record.args`` (uvicorn's
    access log unpacks them) keep working; if the formatted message still holds personal data
    (say an address split between the format string and an argument), the record is replaced by
    its redacted message with no arguments. A traceback is formatted and redacted now, into
    ``exc_text``, which ``logging.Formatter`` uses instead of formatting the exception again.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def redact_record(record: logging.LogRecord) -> None:
    """Redact ``record``'s message, arguments, traceback and stack in place."""
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    if record.args:
        record.args = redact_obj(record.args)
    try:
        message = record.getMessage()
    except (TypeError, ValueError, KeyError):  # a broken format string: logging reports it later
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install_log_redaction() -> None:
    """Redact every log record the process creates, whatever logger or handler it goes to.

    A filter on the root logger's handlers would miss loggers that do not propagate (uvicorn's)
    and handlers added later (uvicorn and Chainlit configure logging after we start), so this
    wraps the log-record factory instead: each record is redacted once, at creation. Calling it
    again does nothing.
    """
    current = logging.getLogRecordFactory()
    if getattr(current, "_switchboard_redacting", False):
        return
    redactor = RedactingFilter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        redactor.filter(record)
        return record

    factory._switchboard_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
