"""`switchboard serve --workers 2` for real: two worker processes on one port over the zero-setup
stores (SQLite, the Chroma folder), fake models that answer after a fixed latency
(bench/scale_parts/replica.py). Two messages for one conversation never run at once, whichever
workers get them; SIGTERM lets the turn in flight finish and refuses new connections."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.scale_parts.replica import ECHO, LATENCY_ENV, write_registry

KEY = "workers-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def ask(url: str, conversation: str, text: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {KEY}", "X-Conversation-Id": conversation},
                      json={"model": "switchboard", "messages": [{"role": "user", "content": text}]})


def test_two_workers_serialize_a_conversation_and_drain_on_sigterm(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"), "SWITCHBOARD_API_KEYS": f"tester={KEY}",
           "SWITCHBOARD_MODELS_FILE": str(write_registry(tmp_path / "models.yaml")),
           "SWITCHBOARD_SETUP_HOOK": "bench.scale_parts.replica:install", LATENCY_ENV: "1500",
           "SWITCHBOARD_CACHE_TTL_S": "0", "SWITCHBOARD_CHECKPOINT_URL": "", "SWITCHBOARD_CHROMA_URL": "",
           "SWITCHBOARD_RECORD_MODE": "off"}
    server = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "serve", "--port", str(port), "--workers", "2",
                               "--graceful-timeout", "20"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read() if server.stdout else ""
            time.sleep(0.5)
        assert len([p for p in children(server.pid) if Path(f"/proc/{p}/cmdline").read_bytes()]) >= 2

        # two messages for one conversation at once: one waits for the other, on whatever worker
        results: dict[str, tuple[httpx.Response, float]] = {}

        def send(name: str, text: str) -> None:
            started = time.monotonic()
            results[name] = (ask(url, "shared", text), time.monotonic() - started)

        threads = [threading.Thread(target=send, args=(n, f"Tell me a joke about {n}")) for n in ("alpha", "beta")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for name, (response, _) in results.items():
            assert response.status_code == 200 and f"{ECHO}Tell me a joke about {name}" in \
                response.json()["choices"][0]["message"]["content"]
        assert max(seconds for _, seconds in results.values()) >= 2 * 1.5  # the second waited for the first
        history = httpx.get(f"{url}/v1/threads/shared", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
        roles = [m["role"] for m in history["messages"]]
        assert roles == ["user", "assistant", "user", "assistant"]  # never interleaved

        # SIGTERM while a turn runs: it finishes; the listener is closed at once
        in_flight: dict[str, httpx.Response] = {}
        t = threading.Thread(target=lambda: in_flight.setdefault("r", ask(url, "drain", "Tell me a joke about gamma")))
        t.start()
        time.sleep(0.7)
        server.send_signal(signal.SIGTERM)  # uvicorn's supervisor passes it on to the workers within ~0.5 s
        out_of_rotation, deadline = False, time.monotonic() + 10
        while not out_of_rotation and time.monotonic() < deadline:
            try:
                out_of_rotation = httpx.get(f"{url}/readyz", timeout=2).status_code == 503
            except httpx.HTTPError:  # the listener closed (or nobody accepts any more)
                out_of_rotation = True
            time.sleep(0.1)
        t.join(30)
        assert out_of_rotation
        assert in_flight["r"].status_code == 200
        assert "Tell me a joke about gamma" in in_flight["r"].json()["choices"][0]["message"]["content"]
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
