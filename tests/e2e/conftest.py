"""Browser tests: the real Chainlit app in a subprocess, driven by headless Chromium (Playwright).

Model calls are replayed from ``cassettes/*.yaml`` (recorded once from the real local model with
``SWITCHBOARD_RECORD_MODE=record uv run pytest tests/e2e``). Chromium is Debian's package
(``scripts/browser.sh``), never a Playwright download; when it is missing the tests skip, or
fail when ``CI=true``. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchboard.settings import REPO_ROOT

CASSETTES = Path(__file__).parent / "cassettes"
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHAINLIT_BIN = str(Path(sys.executable).with_name("chainlit"))
RECORD_MODE = os.environ.get("SWITCHBOARD_RECORD_MODE", "replay")
START_TIMEOUT = 120
FOOTER = re.compile(r"💲\d+\.\d{5} · \d+\.\d s · \d+ LLM calls?")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ChainlitServer:
    """``chainlit run app.py`` in a subprocess, on a free port, with its own data dir."""

    def __init__(self, cassette: str | None, data_dir: Path, log_dir: Path, extra_env: dict[str, str] | None = None):
        """``cassette=None``: no recording, the models run for real (or as ``extra_env`` makes them)."""
        self.cassette = CASSETTES / f"{cassette}.yaml" if cassette else None
        self.data_dir = data_dir
        self.log_path = log_dir / f"server-{cassette or 'live'}-{int(time.time() * 1000)}.log"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChainlitServer:
        if self.cassette is not None and RECORD_MODE == "replay" and not self.cassette.exists():
            pytest.fail(f"no cassette {self.cassette}; record it with SWITCHBOARD_RECORD_MODE=record")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SWITCHBOARD_", "CHAINLIT_"))
            and k not in ("CI", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")
        }
        # `chainlit run` reads env CI as its --ci flag, which then sets a fake OpenAI key.
        env.update(
            {
                "SWITCHBOARD_RECORD_MODE": RECORD_MODE if self.cassette else "off",
                **({"SWITCHBOARD_CASSETTE_PATH": str(self.cassette)} if self.cassette else {}),
                "SWITCHBOARD_DATA_DIR": str(self.data_dir),
                "ANONYMIZED_TELEMETRY": "False",
                "PYTHONUNBUFFERED": "1",
                **self.extra_env,
            }
        )
        self.port = _free_port()
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [CHAINLIT_BIN, "run", "app.py", "--headless", "--port", str(self.port), "--host", "127.0.0.1"],
            cwd=REPO_ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"chainlit exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if _port_open(self.port):
                return self
            time.sleep(0.25)
        self.stop()
        pytest.fail(f"chainlit did not listen on {self.port} within {START_TIMEOUT} s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "log", None) and not self.log.closed:
            self.log.close()

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        msg = f"Chromium not found at {CHROMIUM}; install it with `bash scripts/browser.sh`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return CHROMIUM


@pytest.fixture(scope="module")  # a sync Playwright loop must not outlive the e2e modules: later asyncio tests need the main thread free
def browser(chromium_path: Path) -> Iterator:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)  # 2 shared cores: UI updates can lag behind under load
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def e2e_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the session: the knowledge base is ingested once, history accumulates."""
    return tmp_path_factory.mktemp("e2e") / "data"


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def start_server(chromium_path: Path, e2e_data_dir: Path, server_logs: Path):
    """Start a server for a cassette; in record mode the cassette is re-recorded from scratch
    (once per session, so a restarted server appends to it). Needs Chromium first, so a
    missing browser skips (or fails) before any server starts."""
    started: list[ChainlitServer] = []
    fresh: set[str] = set()

    def start(cassette: str, **extra_env: str) -> ChainlitServer:
        if RECORD_MODE == "record" and cassette not in fresh:
            (CASSETTES / f"{cassette}.yaml").unlink(missing_ok=True)
            fresh.add(cassette)
        server = ChainlitServer(cassette, e2e_data_dir, server_logs, extra_env).start()
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def new_page(browser):
    """Pages with no network beyond the app (the UI asks for web fonts; offline they just fail)."""
    contexts = []

    def make(server: ChainlitServer, width: int = 1280, height: int = 900):
        ctx = browser.new_context(viewport={"width": width, "height": height})
        ctx.set_default_timeout(60_000)
        ctx.route(
            "**/*", lambda route: route.continue_() if route.request.url.startswith(server.url) else route.abort()
        )
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    for c in contexts:
        c.close()


def shot(page, name: str, full: bool = False) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(500)  # let expand/collapse animations finish
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full)
    return path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: drives the real Chainlit app in headless Chromium")
