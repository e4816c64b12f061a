"""Personal data and secrets are masked in logs, records and cassettes; everything else is left as it is.

The corpus (tests/fixtures/redaction_corpus.yaml) is the specification: every labelled span is
found with its exact extent, and nothing is found in the hard negatives. Fake keys are built at
run time so that scripts/scan_secrets.py finds none in this file.
"""

from __future__ import annotations

import io
import logging

import pytest

from bench.redaction_corpus import load_corpus, score, totals
from tools.observability.redaction import (
    Finding,
    RedactingFilter,
    find_personal_data,
    install_log_redaction,
    looks_like_secret,
    redact,
    redact_obj,
)

POSITIVES, NEGATIVES = load_corpus()

# Fake credentials of each kind the scanner knows, assembled here rather than written out.
FAKE_SECRETS = {
    "openai_key": "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8t",
    "anthropic_key": "sk-ant-api03-" + "Zy1xWv4uTs7rQp0oNm3lKj6i",
    "aws_access_key": "AKIA" + "IOSFODNN7EXAMPLE",
    "github_token": "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "slack_token": "xoxb-" + "123456789012-abcdefABCDEF",
}
BEARER = "eyJhbGciOiJIUzI1NiJ9" + ".payload-0123456789"


def test_corpus_is_big_enough_to_mean_something():
    assert len(POSITIVES) >= 60 and len(NEGATIVES) >= 60
    kinds = {kind for case in POSITIVES for kind, _ in case.expected}
    assert kinds == {"email", "phone", "card", "iban"}


def test_corpus_has_no_false_positives_or_false_negatives():
    counts, errors = score(POSITIVES + NEGATIVES)
    total = totals(counts)
    listing = "\n".join(f"{e.error} {e.kind} {e.span!r} in {e.text!r}" for e in errors)
    assert (total.fp, total.fn) == (0, 0), listing
    assert total.tp == sum(len(c.expected) for c in POSITIVES)


def test_the_quick_checks_before_the_patterns_change_no_finding(monkeypatch):
    """find_secrets, _cards and _phones skip text without a hint of their kind (a turn's record
    is mostly such text): with the hints forced to pass, every text gives the same findings."""
    import re

    from tools.observability import redaction

    texts = [c.text for c in POSITIVES + NEGATIVES] + list(FAKE_SECRETS.values()) + [
        f"Authorization: Bearer {BEARER}", "API_KEY = '" + "abcd1234" * 3 + "'", "x-api-key: " + "Zx9" * 8]
    fast = [redaction.find_sensitive(t) for t in texts]
    assert sum(map(len, fast)) >= len(POSITIVES) + len(FAKE_SECRETS) + 3  # the hints let the findings through
    monkeypatch.setattr(redaction, "_SECRET_HINTS", ("",))  # "" is in every text
    monkeypatch.setattr(redaction, "_CARD_HINT", re.compile(""))
    monkeypatch.setattr(redaction, "_PHONE_HINT", re.compile(""))
    assert [redaction.find_sensitive(t) for t in texts] == fast


def test_scoring_counts_a_span_found_too_short_as_both_errors():
    from bench.redaction_corpus import Case

    counts, errors = score([Case("call +1 415 555 0100", (("phone", "+1 415 555"),))])
    assert (counts["phone"].tp, counts["phone"].fp, counts["phone"].fn) == (0, 1, 1)
    assert {e.error for e in errors} == {"FP", "FN"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane.doe@example.com now", "mail [email] now"),
        ("call (415) 555-0100.", "call [phone]."),
        ("card 4111 1111 1111 1111, exp 12/27", "card [card], exp 12/27"),
        ("IBAN GB82 WEST 1234 5698 7654 32", "IBAN [iban]"),
        ("4111 1111 1111 1112 stays", "4111 1111 1111 1112 stays"),  # Luhn-invalid
        ("GB82 WEST 1234 5698 7654 33 stays", "GB82 WEST 1234 5698 7654 33 stays"),  # mod 97 fails
    ],
)
def test_redact_replaces_each_kind_with_its_placeholder(text, expected):
    assert redact(text) == expected


def test_findings_are_exact_spans_of_the_text():
    text = "Refund DE89 3704 0044 0532 0130 00 and tell a.b@example.com"
    found = find_personal_data(text)
    assert [f.kind for f in found] == ["iban", "email"]
    assert all(text[f.start : f.end] == f.text for f in found)
    start = text.index("a.b@")
    assert found[1] == Finding("email", start, start + len("a.b@example.com"), "a.b@example.com")


def test_digits_of_an_iban_are_not_also_claimed_as_a_phone():
    assert [f.kind for f in find_personal_data("call 0417 1643 00")] == ["phone"]  # alone, a Dutch number
    assert [f.kind for f in find_personal_data("pay NL91 ABNA 0417 1643 00")] == ["iban"]
    assert find_personal_data("pay NL91 ABNA 0417 1643 01") == []  # check digits fail: neither


@pytest.mark.parametrize(
    "answer",
    [
        "There are 59 customers; 5 of them are from Brazil.",
        "Invoice 98 (2021-03-11) totals $3.96: 4 tracks at $0.99.",
        "You can request a full refund within 14 days of purchase [1].\n\nSources: [1] Refund policy "
        "(https://help.chinook.example/articles/refunds)",
        "The longest track is 'Occupation / Precipice' at 5286953 ms (about 88 minutes).",
        "SQL: SELECT COUNT(*) FROM Invoice WHERE date(InvoiceDate) BETWEEN '2021-01-01' AND '2021-12-31'",
        "Support is open Monday to Friday, 09:00–18:00 UTC.",
    ],
)
def test_plain_support_answers_come_back_untouched(answer):
    assert redact(answer) is answer
    assert find_personal_data(answer) == []


def test_redact_obj_redacts_nested_strings_and_keeps_the_rest():
    record = {
        "thread_id": "chat-42",
        "cost_usd": 0.0012,
        "ok": True,
        "user": {"email": "jane@example.com", "phones": ["+1 415 555 0100", None]},
        "routes": [{"agent": "sql", "result": [(1, "luisg@example.com", 13.86)]}],
        "jane@example.com": "keys are redacted too",
    }
    out = redact_obj(record)
    assert out == {
        "thread_id": "chat-42",
        "cost_usd": 0.0012,
        "ok": True,
        "user": {"email": "[email]", "phones": ["[phone]", None]},
        "routes": [{"agent": "sql", "result": [(1, "[email]", 13.86)]}],
        "[email]": "keys are redacted too",
    }
    assert record["user"]["email"] == "jane@example.com"  # a copy: the caller's record is unchanged


@pytest.mark.parametrize(("kind", "secret"), sorted(FAKE_SECRETS.items()))
def test_vendor_keys_are_secrets_and_masked(kind, secret):
    text = f"using {secret} for the call"
    assert looks_like_secret(text) == [kind]
    assert redact(text) == "using [secret] for the call"


def test_bearer_tokens_and_key_assignments_keep_their_label():
    assert redact(f"Authorization: Bearer {BEARER}") == "Authorization: Bearer [secret]"
    value = "q8Zt" + "3Lm9Xw2Rv7Kp1Nc4"
    assert redact(f'api_key = "{value}"') == 'api_key = "[secret]"'
    assert redact(f'{{"x-api-key": "{value}"}}') == '{"x-api-key": "[secret]"}'
    assert looks_like_secret(f"Bearer {BEARER} and api_key={value}") == ["bearer_token", "api_key_assignment"]


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer <key>",
        "api_key = settings.openai_api_key",
        'api_key="change-me"',
        "SWITCHBOARD_API_KEYS=change-me,another-key",
        "a task-management-system-for-teams and risk-assessment-document",
        "Bearer authentication",
    ],
)
def test_things_that_only_mention_keys_are_not_secrets(text):
    assert looks_like_secret(text) == []
    assert redact(text) == text


def test_digits_inside_a_key_are_not_reported_as_personal_data():
    key = "sk-" + "4155550100" + "4111111111111111" + "abc"
    assert find_personal_data(f"key {key}") == []
    assert redact(f"key {key}") == "key [secret]"


# --- logging -------------------------------------------------------------------------------------


@pytest.fixture
def log_redaction():
    """Install the record factory for one test and put the previous one back afterwards."""
    previous = logging.getLogRecordFactory()
    install_log_redaction()
    yield
    logging.setLogRecordFactory(previous)


def test_a_logged_email_is_redacted(log_redaction, caplog):
    caplog.set_level(logging.INFO, logger="switchboard.test")
    logging.getLogger("switchboard.test").info("customer %s asked about invoice %d", "jane@example.com", 98)
    assert caplog.messages == ["customer [email] asked about invoice 98"]
    assert "jane@example.com" not in caplog.text


def test_records_reach_non_propagating_loggers_redacted(log_redaction):
    # uvicorn's loggers do not propagate to the root: a filter on root handlers would miss them.
    stream = io.StringIO()
    logger = logging.getLogger("switchboard.test.isolated")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("no customer with email jane@example.com")
        except ValueError:
            logger.exception("lookup failed for card 4111 1111 1111 1111")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    out = stream.getvalue()
    assert out.startswith("ERROR lookup failed for card [card]\n")
    assert "ValueError: no customer with email [email]" in out
    assert "jane@example.com" not in out and "4111" not in out


def test_argument_tuples_survive_for_formatters_that_read_them(log_redaction):
    # uvicorn's access formatter unpacks record.args; only the sensitive argument changes.
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/v1/threads/jane@example.com", "1.1", 200), None,
    )
    assert record.args == ("127.0.0.1:5000", "GET", "/v1/threads/[email]", "1.1", 200)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /v1/threads/[email] HTTP/1.1" 200'


def test_a_value_split_between_format_and_argument_is_still_redacted():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "mail jane@%s", ("example.com",), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "mail [email]" and record.args is None


def test_install_is_idempotent(log_redaction):
    factory = logging.getLogRecordFactory()
    install_log_redaction()
    assert logging.getLogRecordFactory() is factory
