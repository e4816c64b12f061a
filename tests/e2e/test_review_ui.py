"""Human review in the chat UI: a query reading a sensitive column pauses the turn with Approve /
Reject / Edit SQL buttons; a click resumes it; a paused conversation reopened after a server
restart shows its buttons again (cassettes/review.yaml: the local model writes the query once,
the gateway's cache answers the node's re-runs)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.e2e.chat import TURN_TIMEOUT, open_chat, replies
from tests.e2e.conftest import shot

pytestmark = pytest.mark.e2e

QUESTION = "What is the phone number of customer Luís Gonçalves?"
PHONE = "+55 (12) 3923-5555"
EMAIL = "luisg@embraer.com.br"


def review_message(page: Page) -> Locator:
    return page.locator('[data-step-type="assistant_message"]').filter(has_text="Waiting for review").last


def ask_and_pause(page: Page) -> Locator:
    before = page.locator('[data-step-type="assistant_message"]').filter(has_text="Waiting for review").count()
    page.locator("#chat-input").fill(QUESTION)
    page.locator("#chat-submit").click()
    expect(page.locator('[data-step-type="assistant_message"]').filter(has_text="Waiting for review")).to_have_count(
        before + 1, timeout=TURN_TIMEOUT)
    message = review_message(page)
    expect(message).to_contain_text("Customer.Phone")
    expect(message).to_contain_text(re.compile(r"SELECT\s.*Phone.*FROM\s+Customer", re.S))
    return message


def click(page: Page, label: str) -> int:
    before = replies(page).count()
    page.get_by_role("button", name=label).last.click()
    return before


def test_approve_then_reject_in_one_conversation(start_server, new_page):
    server = start_server("review")
    page = new_page(server, height=1500)
    open_chat(page, server.url)
    ask_and_pause(page)
    expect(page.get_by_role("button", name="Approve")).to_be_visible()
    expect(page.get_by_role("button", name="Reject")).to_be_visible()
    expect(page.get_by_role("button", name="Edit SQL")).to_be_visible()
    expect(page.get_by_text(PHONE)).to_have_count(0)  # nothing was read yet
    shot(page, "10-review-buttons")

    before = click(page, "Approve")
    expect(replies(page)).to_have_count(before + 1, timeout=TURN_TIMEOUT)
    expect(replies(page).last).to_contain_text(PHONE)
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)  # decided: the buttons are gone
    shot(page, "11-review-approved")

    ask_and_pause(page)
    before = click(page, "Reject")
    expect(replies(page)).to_have_count(before + 1, timeout=TURN_TIMEOUT)
    expect(replies(page).last).to_contain_text("A reviewer declined")


def test_a_paused_conversation_shows_its_buttons_after_a_restart(start_server, new_page):
    server = start_server("review")
    page = new_page(server, height=1500)
    open_chat(page, server.url)
    ask_and_pause(page)
    expect(page).to_have_url(re.compile(r"/thread/[0-9a-f-]+$"))
    thread_id = page.url.rsplit("/thread/", 1)[1]
    page.close()
    server.stop()

    server = start_server("review")
    page = new_page(server, height=1500)
    open_chat(page, server.url)
    page.locator("#thread-history").get_by_text(QUESTION).first.click()
    expect(page).to_have_url(re.compile(f"/thread/{thread_id}$"))
    expect(review_message(page)).to_contain_text("Customer.Phone")
    expect(page.get_by_role("button", name="Edit SQL")).to_be_visible(timeout=60_000)
    shot(page, "12-review-after-restart")
    before = click(page, "Edit SQL")
    expect(page.get_by_text("Send the SQL to run instead")).to_be_visible()
    page.locator("#chat-input").fill("SELECT Email FROM Customer WHERE CustomerId = 1")
    page.locator("#chat-submit").click()
    expect(replies(page)).to_have_count(before + 1, timeout=TURN_TIMEOUT)
    expect(replies(page).last).to_contain_text(EMAIL)
    expect(page.get_by_role("button", name="Edit SQL")).to_have_count(0)
