"""The chat UI shows a clear error, with the cause and the fix, when the local runtime fails its
self-check (simulated: the check's child process dies by SIGILL, tests/fixtures/fake_llama_cpp),
and the server stays up for the next message."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from switchboard.settings import REPO_ROOT
from tests.e2e.chat import open_chat
from tests.e2e.conftest import ChainlitServer, shot

pytestmark = pytest.mark.e2e
SIGILL_RUNTIME = REPO_ROOT / "tests" / "fixtures" / "fake_llama_cpp" / "sigill"


@pytest.fixture(scope="module")
def broken_server(chromium_path, tmp_path_factory, server_logs):
    root = tmp_path_factory.mktemp("broken-runtime")
    model = root / "model.gguf"
    model.write_bytes(b"GGUF-fixture")
    server = ChainlitServer(None, root / "data", server_logs, {
        "PYTHONPATH": str(SIGILL_RUNTIME), "SWITCHBOARD_LOCAL_GGUF": str(model),
        "SWITCHBOARD_MODEL_CACHE_DIR": str(root / "cache")}).start()
    yield server
    server.stop()


def test_ui_shows_the_runtime_error_and_keeps_serving(broken_server, new_page):
    page = new_page(broken_server)
    open_chat(page, broken_server.url)
    for n in (1, 2):  # the second message is answered the same way: nothing hangs, nothing loops
        page.locator("#chat-input").fill("How many customers are from Brazil?")
        page.locator("#chat-submit").click()
        error = page.get_by_text("crashed with SIGILL")
        expect(error).to_have_count(n, timeout=120_000)
    expect(error.last).to_contain_text("uv sync --reinstall-package llama-cpp-python")
    shot(page, "runtime-error")
    assert broken_server.proc is not None and broken_server.proc.poll() is None
