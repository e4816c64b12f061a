"""The chat UI end to end: real server, real browser, replayed model calls (cassettes/chat.yaml)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.chat import FOOTER, ask, open_chat, open_step, replies, step
from tests.e2e.conftest import shot

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(start_server):
    return start_server("chat")


@pytest.fixture(scope="module")
def receipt_png(tmp_path_factory) -> Path:
    """A small receipt with a few lines of text (Pillow, DejaVu; the same bytes every run)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 30)
    img = Image.new("RGB", (640, 330), "white")
    d = ImageDraw.Draw(img)
    for i, line in enumerate(["Chinook Music Store", "Invoice 98", "2022-03-11", "Total 3.98 USD"]):
        d.text((40, 36 + i * 68), line, font=font, fill="black")
    path = tmp_path_factory.mktemp("upload") / "receipt.png"
    img.save(path)
    return path


def test_banner_shows_models_data_and_the_routing_policy_setting(server, new_page):
    page = new_page(server)
    open_chat(page, server.url)
    banner = page.locator('[data-step-type="assistant_message"]').first
    expect(banner).to_contain_text("local-qwen2.5-coder-1.5b")
    expect(banner).to_contain_text("chinook.sqlite")
    expect(banner).to_contain_text("Routing policy: balanced")
    page.locator("#chat-settings-open-modal").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Routing policy")
    expect(dialog).to_contain_text("Balanced")
    shot(page, "01-banner-and-settings")


def test_sql_question_shows_triage_sql_evidence_and_the_cost_footer(server, new_page):
    page = new_page(server, height=1900)
    open_chat(page, server.url)
    reply = ask(page, "How many customers are from Brazil?")
    expect(reply).to_contain_text("5 customers from Brazil")
    expect(reply).to_contain_text(re.compile(r"💲0\.00000 · \d+\.\d s · 1 LLM call\b"))

    triage = open_step(page, "Triage")
    expect(triage).to_contain_text("classifier")
    expect(triage).to_contain_text("routing used 0 LLM calls")
    sql = open_step(page, "SQL agent")
    expect(sql).to_contain_text("local-qwen2.5-coder-1.5b")
    expect(sql).to_contain_text(re.compile(r"\d+ in / \d+ out tokens · \$0\.00000"))
    expect(sql.locator("code").filter(has_text="Brazil").first).to_contain_text("SELECT")
    expect(sql.locator("table")).to_contain_text("5")
    shot(page, "02-sql-question")


def test_refund_policy_is_answered_with_a_citation(server, new_page):
    page = new_page(server, height=1500)
    open_chat(page, server.url)
    reply = ask(page, "What's your refund policy?")
    expect(reply).to_contain_text("14 days")
    expect(reply).to_contain_text("Refund policy")
    expect(reply).to_contain_text(FOOTER)
    kb = open_step(page, "Knowledge base")
    expect(kb).to_contain_text("Citations")
    expect(kb.get_by_role("link", name="Refund policy").first).to_be_visible()
    expect(kb).to_contain_text("Retrieved passages")
    shot(page, "03-refund-policy")


def test_two_part_question_gets_two_specialists_and_one_reply(server, new_page):
    page = new_page(server, height=1100)
    open_chat(page, server.url)
    reply = ask(page, "How many customers are from Germany, and what are your support hours?")
    expect(reply).to_contain_text("4 customers from Germany")
    expect(reply).to_contain_text(re.compile(r"09:00.{1,3}18:00"))
    expect(reply).to_contain_text(re.compile(r"· 2 LLM calls"))
    expect(step(page, "SQL agent")).to_be_visible()
    expect(step(page, "Knowledge base")).to_be_visible()
    triage = open_step(page, "Triage")
    expect(triage).to_contain_text("Split into 2 parts")
    shot(page, "04-two-part-question")


def test_image_upload_is_read_and_answered(server, new_page, receipt_png):
    page = new_page(server, height=1700)
    open_chat(page, server.url)
    reply = ask(page, "What is the total on this receipt?", image=receipt_png)
    expect(reply).to_contain_text("3.98")
    expect(reply).to_contain_text(FOOTER)
    vision = open_step(page, "Vision")
    expect(vision).to_contain_text("receipt.png")
    expect(vision).to_contain_text("Read from the image")
    expect(vision).to_contain_text("2022-03-11")  # the date field, read by OCR
    expect(vision.locator("code").filter(has_text="3.98").first).to_be_visible()  # the OCR text
    vision.scroll_into_view_if_needed()
    shot(page, "05-image-upload")


def test_a_file_that_is_not_an_image_gets_a_clear_message(server, new_page, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"definitely not the rest of a png")
    page = new_page(server)
    open_chat(page, server.url)
    # typed by its content before any turn runs: refused with a message, no model call, nothing stored
    with page.expect_response(lambda r: "/project/file" in r.url and r.request.method == "POST"):
        page.set_input_files("#upload-button-input", str(bad))
    page.locator("#chat-input").fill("What is the total on this receipt?")
    page.locator("#chat-submit").click()
    refusal = page.locator('[data-step-type="assistant_message"]').filter(has_text="broken.png").last
    expect(refusal).to_contain_text(re.compile(r"corrupt|not an image|cannot"), timeout=60_000)
    expect(replies(page)).to_have_count(0)  # no turn ran: no answer with a cost footer
    shot(page, "06-bad-upload")


def test_thumbs_up_on_an_answer_lands_in_the_audit_trail(server, new_page):
    """Chainlit's feedback buttons: the answer message's id is its audit answer id, so `switchboard
    compare` can count users' thumbs per model."""
    import time

    from tools.observability.audit import AuditTrail

    page = new_page(server)
    open_chat(page, server.url)
    reply = ask(page, "How many customers are from Brazil?")
    reply.hover()
    page.locator(".positive-feedback-off").last.click()
    dialog = page.get_by_role("dialog")
    if dialog.count():
        dialog.get_by_role("button", name=re.compile("submit", re.I)).click()
    expect(page.locator(".positive-feedback-on").last).to_be_visible()
    trail = AuditTrail(f"sqlite:///{server.data_dir / 'audit.sqlite'}")
    deadline = time.monotonic() + 20  # the data layer writes in a background task
    while not (votes := trail.feedback()) and time.monotonic() < deadline:
        time.sleep(0.2)
    answers = {t["answer_id"] for t in trail.turns()}
    assert [v for a, v in votes.items() if a in answers] == [[1]]


def test_a_foreign_origin_gets_no_cors_grant(server):
    """Issue 15: ``allow_origins = ["*"]`` answered credentialed requests from any site. Now only the
    app's own origin is served (a browser needs no CORS for it); another site gets no grant."""
    import httpx

    evil = "https://evil.example"
    preflight = httpx.options(f"{server.url}/project/settings", timeout=30, headers={
        "Origin": evil, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    simple = httpx.get(f"{server.url}/auth/config", timeout=30, headers={"Origin": evil, "Cookie": "access_token=x"})
    # The preflight is refused and neither reply names the site in Access-Control-Allow-Origin: no
    # browser then sends the credentialed request or lets the site read a reply. (Chainlit's CORS
    # middleware adds a static "Allow-Credentials: true" to every reply; without a matching
    # Allow-Origin it grants nothing. With "*" the origin was echoed back next to it.)
    assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in simple.headers, dict(simple.headers)
    own = httpx.get(f"{server.url}/auth/config", timeout=30, headers={"Origin": server.url})
    assert own.status_code == 200  # the UI's own requests still work
