"""The chat UI door: ``chainlit run app.py`` as a subprocess, driven by headless Chromium (Playwright).

Chromium is Debian's (``scripts/browser.sh``; ``CHROMIUM_PATH`` to use another), launched as the
e2e tests launch it; pages reach only the app. Each turn opens a new chat (a new conversation),
waits for the banner, then types the question and clicks send. Timed in the page
(``performance.now()``, so Playwright's own round trips do not count): from the send button's
click to the first assistant message after it with text in its content (the reply: one part
streams token by token; several are laid out as they grow), and to the reply's cost footer (the
answer is complete). A ``MutationObserver`` checks the DOM on every change, before the browser
paints it. A cold turn is the first message to a freshly started app (it listens already; its
start-up warm-up of the classifier and knowledge base may still run and then counts).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.streaming_parts.plan import (
    TURN_TIMEOUT_S,
    VENV_BIN,
    ServerDoor,
    Step,
)

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

WATCH = r"""() => {
  const sel = '[data-step-type="assistant_message"]';
  const footer = /💲\d+\.\d{5} · \d+\.\d s · \d+ LLM calls?/;
  const w = window.__sbBench = {before: document.querySelectorAll(sel).length, click: null, first: null,
                                firstText: null, done: null, text: '',
                                updates: 0, last: null};
  document.addEventListener('click', e => {
    if (w.click === null && e.target.closest && e.target.closest('#chat-submit')) w.click = performance.now();
  }, true);
  const check = () => {
    if (w.click === null || w.done !== null) return;
    const msgs = document.querySelectorAll(sel);
    for (let i = w.before; i < msgs.length; i++) {
      const content = msgs[i].querySelector('.message-content') || msgs[i];
      const text = (content.innerText || '').trim();
      if (!text) continue;
      if (w.first === null) { w.first = performance.now(); w.firstText = text.slice(0, 80); }
      if (footer.test(text)) { w.done = performance.now(); w.text = text; }
      else if (text !== w.text) { w.updates += 1; w.last = performance.now(); w.text = text; }
      break;
    }
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def available() -> str | None:
    """Why the UI door cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (install it with `bash scripts/browser.sh`, or set CHROMIUM_PATH)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    return None


def ask(browser: Any, url: str, step: Step) -> dict[str, Any]:
    from playwright.sync_api import expect

    rec: dict[str, Any] = {"door": "ui", **step.as_dict(), "ttft_s": None, "total_s": None}
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        ctx.set_default_timeout(60_000)
        ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
        page = ctx.new_page()
        page.goto(url)
        expect(page.get_by_text("Routing policy:").last).to_be_visible(timeout=120_000)
        page.evaluate(WATCH)
        page.locator("#chat-input").fill(step.question)
        submit = page.locator("#chat-submit")
        expect(submit).to_be_enabled()
        submit.click()
        page.wait_for_function("() => window.__sbBench.done !== null", timeout=TURN_TIMEOUT_S * 1000, polling=250)
        w = page.evaluate("() => window.__sbBench")
        rec["ttft_s"] = (w["first"] - w["click"]) / 1000
        rec["total_s"] = (w["done"] - w["click"]) / 1000
        rec["first_text"] = w["firstText"]
        rec["updates"] = w["updates"]  # reply texts seen before the footer (the DOM, checked on every change)
        rec["last_update_s"] = (w["last"] - w["click"]) / 1000 if w["last"] is not None else None
        rec["answer"] = w["text"]
    except Exception as exc:  # noqa: BLE001 - reported in the output, the bench goes on
        rec["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        ctx.close()
    return rec


class UiDoor(ServerDoor):
    """A fresh ``chainlit run app.py`` on a free port; each turn in a new chat of ``browser``."""

    name, label = "ui", "chainlit run app.py"

    def __init__(self, browser: Any, data_dir: Path, log_dir: Path) -> None:
        super().__init__(data_dir, log_dir)
        self.browser = browser

    def command(self, port: int) -> list[str]:
        return [str(VENV_BIN / "chainlit"), "run", "app.py", "--headless", "--port", str(port), "--host", "127.0.0.1"]

    def ask_at(self, url: str, step: Step) -> dict[str, Any]:
        return ask(self.browser, url, step)
