"""What a user does in the Chainlit UI, as Playwright calls (shared by the e2e tests)."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

FOOTER = re.compile(r"💲\d+\.\d{5} · \d+\.\d s · \d+ LLM calls?")
TURN_TIMEOUT = 120_000  # ms; the first turn of a fresh server also waits for the knowledge base


def open_chat(page: Page, url: str) -> None:
    """Open a new conversation and wait for the banner (the socket is up and on_chat_start ran)."""
    page.goto(url)
    expect(page.get_by_text("Routing policy:").last).to_be_visible(timeout=60_000)


def replies(page: Page) -> Locator:
    """Assistant replies that are answers to a turn (they carry the cost footer)."""
    return page.locator('[data-step-type="assistant_message"]').filter(has_text=FOOTER)


def ask(page: Page, text: str, image: Path | None = None, timeout: int = TURN_TIMEOUT) -> Locator:
    """Send a message (optionally with an image) and return the reply once its footer is there."""
    before = replies(page).count()
    if image is not None:
        with page.expect_response(lambda r: "/project/file" in r.url and r.request.method == "POST"):
            page.set_input_files("#upload-button-input", str(image))
        expect(page.locator(f'#attachments img[alt="{image.name}"]')).to_be_visible()
    page.locator("#chat-input").fill(text)
    submit = page.locator("#chat-submit")
    expect(submit).to_be_enabled()
    submit.click()
    expect(replies(page)).to_have_count(before + 1, timeout=timeout)
    return replies(page).nth(before)


def step(page: Page, title: str) -> Locator:
    """The latest collapsible step called ``title`` ("Triage", "SQL agent", ...)."""
    return page.locator('[data-step-type="tool"]').filter(has_text=f"Used {title}").last


def open_step(page: Page, title: str) -> Locator:
    s = step(page, title)
    s.get_by_text(f"Used {title}", exact=True).click()
    return s


def scroll_to(locator: Locator) -> None:
    locator.scroll_into_view_if_needed()
