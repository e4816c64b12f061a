"""The chat UI streams for real: the reply grows in the browser while the model is still writing, and
the stop button stops the model.

The Chainlit server runs with a scripted model that writes one word every ``DELAY_S`` seconds
(``tests/fixtures/scripted_ui/sitecustomize.py``, test-only, first on the server's ``PYTHONPATH``)
and logs the ``time.monotonic()`` of each word to a file. That clock is the machine's, the same in
the server and in this test, so a text seen in the browser before the model's last word can only
come from a real stream.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from switchboard.settings import REPO_ROOT
from tests.e2e.chat import open_chat, replies
from tests.e2e.conftest import ChainlitServer, shot

pytestmark = pytest.mark.e2e

SCRIPTED_UI = REPO_ROOT / "tests" / "fixtures" / "scripted_ui"
ANSWER = ("Hello there! I am the Chinook support assistant and I can help with orders, downloads, invoices "
          "and refunds. Tell me what you bought and when, and I will look it up for you. Music is "
          "waiting, so let us sort this out together quickly and politely today.")
WORDS = len(ANSWER.split())
DELAY_S = 0.15
HELLO = "Hello there, how are you?"
# the text of the newest assistant message: its first paragraph (the answer; the footer follows)
LAST_TEXT = """() => {
    const m = [...document.querySelectorAll('[data-step-type="assistant_message"]')].pop();
    const p = m && m.querySelector('.message-content [role="article"]');
    return p ? p.innerText : null;
}"""


class SlowServer:
    def __init__(self, server: ChainlitServer, token_log: Path) -> None:
        self.server, self.token_log = server, token_log

    def token_times(self) -> list[float]:
        if not self.token_log.exists():
            return []
        return [float(line) for line in self.token_log.read_text().split()]


@pytest.fixture(scope="module")
def slow(chromium_path: Path, tmp_path_factory: pytest.TempPathFactory, server_logs: Path) -> Iterator[SlowServer]:
    root = tmp_path_factory.mktemp("streaming-ui")  # its own data dir: its chat history stays out of the others'
    token_log = root / "tokens.log"
    pythonpath = os.pathsep.join(p for p in (str(SCRIPTED_UI), os.environ.get("PYTHONPATH", "")) if p)
    server = ChainlitServer(None, root / "data", server_logs, {
        "PYTHONPATH": pythonpath, "SCRIPTED_UI_ANSWER": ANSWER, "SCRIPTED_UI_TOKEN_DELAY_S": str(DELAY_S),
        "SCRIPTED_UI_TOKEN_LOG": str(token_log),
        "SWITCHBOARD_CACHE_TTL_S": "0"}).start()  # every turn calls the model: none is answered from the cache
    yield SlowServer(server, token_log)
    server.stop()


def send(page: Page, text: str) -> None:
    page.locator("#chat-input").fill(text)
    submit = page.locator("#chat-submit")
    expect(submit).to_be_enabled()
    submit.click()


def is_partial(text: str | None) -> bool:
    """A non-empty beginning of the answer, not all of it."""
    return bool(text and text.strip()) and ANSWER.startswith(text.strip()) and text.strip() != ANSWER


def test_the_reply_grows_in_the_browser_while_the_model_writes(slow: SlowServer, new_page) -> None:
    page = new_page(slow.server)
    open_chat(page, slow.server.url)
    written_before = len(slow.token_times())
    before = replies(page).count()
    send(page, HELLO)
    seen: list[tuple[float, str]] = []  # (when this test had seen it, the reply's text)
    deadline = time.monotonic() + 180
    while replies(page).count() == before and time.monotonic() < deadline:
        text = page.evaluate(LAST_TEXT)
        seen.append((time.monotonic(), text))
        page.wait_for_timeout(40)
    reply = replies(page).nth(before)
    expect(reply).to_contain_text(ANSWER)
    assert reply.locator('.message-content [role="article"]').first.inner_text().strip() == ANSWER
    times = slow.token_times()[written_before:]
    assert len(times) == WORDS  # one model call, word by word
    partial = [(t, text) for t, text in seen if is_partial(text)]
    assert len({text for _, text in partial}) >= 2  # the reply grew through several partial texts
    assert partial[0][0] < times[-1]  # a partial reply was on screen before the model wrote its last word
    lengths = [len(text) for _, text in partial]
    assert lengths == sorted(lengths)  # it only grew: each partial text was the beginning of the next
    shot(page, "streaming-reply")


def test_the_stop_button_stops_the_model_and_the_next_message_is_answered(slow: SlowServer, new_page) -> None:
    page = new_page(slow.server)
    open_chat(page, slow.server.url)
    written_before = len(slow.token_times())
    before = replies(page).count()
    send(page, HELLO)
    deadline = time.monotonic() + 180
    while not is_partial(page.evaluate(LAST_TEXT)) and time.monotonic() < deadline:
        page.wait_for_timeout(40)
    assert is_partial(page.evaluate(LAST_TEXT))  # the first words are on screen
    page.locator("#stop-button").click()
    expect(page.get_by_text("Task manually stopped.")).to_be_visible()
    expect(page.locator("#chat-submit")).to_be_visible()  # the composer is ready again
    page.wait_for_timeout(10 * DELAY_S * 1000)  # ten more words' time: a model still writing would add them
    stopped_at = len(slow.token_times())
    page.wait_for_timeout(10 * DELAY_S * 1000)
    assert len(slow.token_times()) == stopped_at  # the model call was cancelled ...
    assert stopped_at - written_before < WORDS // 2  # ... well before the end of its answer
    assert replies(page).count() == before  # the stopped turn got no answer with a footer
    shot(page, "streaming-stopped")

    send(page, HELLO)
    expect(replies(page)).to_have_count(before + 1, timeout=180_000)
    reply = replies(page).nth(before)
    assert reply.locator('.message-content [role="article"]').first.inner_text().strip() == ANSWER
    # only the new turn's model call ran: the stopped turn was closed, not finished first
    assert len(slow.token_times()) - stopped_at == WORDS
    expect(page.get_by_text("could not be answered")).to_have_count(0)
