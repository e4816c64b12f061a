"""Conversations survive a server restart: sign in (password auth on), talk, restart, pick the
thread in the sidebar, and a follow-up still knows what "them" means (cassettes/history.yaml)."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest
from playwright.sync_api import expect

from tests.e2e.chat import FOOTER, ask, open_step, replies
from tests.e2e.conftest import shot

pytestmark = pytest.mark.e2e

USERS = {"SWITCHBOARD_UI_USERS": "alice:correct horse,bob:battery"}
FIRST = "How many customers do we have?"
FOLLOW_UP = "And how many of them are from Brazil?"


def sign_in(page, url: str, user: str, password: str) -> None:
    page.goto(url)
    page.locator("#email").fill(user)
    page.locator("#password").fill(password)
    page.get_by_role("button", name="Sign In").click()


def test_thread_resumes_from_the_sidebar_after_a_restart(start_server, new_page, e2e_data_dir):
    server = start_server("history", **USERS)
    page = new_page(server, height=1300)
    for user, password in (("alice", "wrong"), ("mallory", "correct horse")):
        sign_in(page, server.url, user, password)
        expect(page.get_by_text("Unable to sign in")).to_be_visible()
    shot(page, "07-sign-in-refused")
    sign_in(page, server.url, "alice", "correct horse")
    expect(page.get_by_text("Routing policy:").last).to_be_visible(timeout=60_000)
    reply = ask(page, FIRST)
    expect(reply).to_contain_text("59")
    expect(page).to_have_url(re.compile(r"/thread/[0-9a-f-]+$"))  # set once the first turn is saved
    thread_id = page.url.rsplit("/thread/", 1)[1]
    page.close()
    server.stop()

    server = start_server("history", **USERS)
    page = new_page(server, height=1300)
    sign_in(page, server.url, "alice", "correct horse")
    expect(page.get_by_text("Routing policy:").last).to_be_visible(timeout=60_000)
    entry = page.locator("#thread-history").get_by_text(FIRST)
    expect(entry).to_be_visible()
    entry.click()
    expect(page).to_have_url(re.compile(f"/thread/{thread_id}$"))
    # the old turn is back: question, steps and answer with its footer
    expect(page.get_by_text(FIRST).last).to_be_visible()
    expect(replies(page)).to_have_count(1)
    expect(replies(page).first).to_contain_text("59")
    sql = open_step(page, "SQL agent")  # the steps were saved whole, not as first sent
    expect(sql).to_contain_text("SELECT COUNT(*) FROM Customer")
    expect(sql).to_contain_text("local-qwen2.5-coder-1.5b")
    shot(page, "08-thread-resumed-after-restart")
    reply = ask(page, FOLLOW_UP)
    expect(reply).to_contain_text(re.compile(r"\b5\b"))
    expect(reply).to_contain_text("Brazil")
    expect(reply).to_contain_text(FOOTER)
    sql = open_step(page, "SQL agent")  # "them" was resolved to customers from the saved context
    expect(sql.locator("code").filter(has_text="Brazil").first).to_contain_text("Customer")
    shot(page, "09-follow-up-uses-the-old-context")

    # another user does not see alice's conversation
    other = new_page(server)
    sign_in(other, server.url, "bob", "battery")
    expect(other.get_by_text("Routing policy:").last).to_be_visible(timeout=60_000)
    expect(other.locator("#thread-history").get_by_text(FIRST)).to_have_count(0)

    # deleting the conversation deletes its graph state too
    assert checkpoint_rows(e2e_data_dir, thread_id) > 0
    item = page.locator(f"#thread-{thread_id}")
    item.hover()
    item.locator("#thread-options").click()
    page.get_by_role("menuitem", name="Delete").click()
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("#thread-history").get_by_text(FIRST)).to_have_count(0)
    deadline = time.monotonic() + 20
    while checkpoint_rows(e2e_data_dir, thread_id) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert checkpoint_rows(e2e_data_dir, thread_id) == 0


def checkpoint_rows(data_dir, thread_id: str) -> int:
    with sqlite3.connect(data_dir / "checkpoints.sqlite") as con:
        return con.execute("SELECT COUNT(*) FROM checkpoints WHERE thread_id = ?", (thread_id,)).fetchone()[0]
