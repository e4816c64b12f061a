"""The HTTP door: ``switchboard serve --insecure-no-auth`` as a subprocess, asked with httpx.

Each turn is ``POST /v1/chat/completions`` with ``stream: true`` and a new ``X-Conversation-Id``.
Measured from sending the request: the first ``chat.completion.chunk`` whose delta has content
(the role chunk, empty, does not count) and the final chunk (``finish_reason: stop``, with the
``switchboard`` block: routes and their tokens). A cold turn is the first one a freshly started
server answers (it listens already: the time to start it is reported apart).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from bench.streaming_parts.plan import (
    TURN_TIMEOUT_S,
    VENV_BIN,
    ServerDoor,
    Step,
)


def ask(base: str, step: Step) -> dict[str, Any]:
    import httpx

    rec: dict[str, Any] = {"door": "http", **step.as_dict(), "ttft_s": None, "total_s": None}
    body = {"model": "switchboard", "stream": True, "messages": [{"role": "user", "content": step.question}]}
    headers = {"X-Conversation-Id": f"bench-{uuid.uuid4().hex[:12]}"}
    text, block = "", None
    started = time.monotonic()
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers,
                      timeout=httpx.Timeout(TURN_TIMEOUT_S, connect=10.0)) as response:
        rec["status"] = response.status_code
        if response.status_code != 200:
            rec["error"] = response.read().decode("utf-8", errors="replace")[:500]
            return rec
        for line in response.iter_lines():
            now = time.monotonic() - started
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                rec["done_s"] = now
                break
            chunk = json.loads(data)
            if "error" in chunk:
                rec["error"] = chunk["error"].get("message")
                continue
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content and not choice.get("finish_reason"):
                    text += content
                    rec["ttft_s"] = rec["ttft_s"] if rec["ttft_s"] is not None else now
                    rec["updates"], rec["last_update_s"] = rec.get("updates", 0) + 1, now
                if choice.get("finish_reason") == "stop":
                    rec["total_s"], block = now, chunk.get("switchboard")
    rec["answer"] = text
    if block:
        rec["ledger"] = [{"agent": r["agent"], "tokens_in": r["tokens_in"], "tokens_out": r["tokens_out"]}
                         for r in block.get("routes") or []]  # per part, its calls summed
    return rec


class HttpDoor(ServerDoor):
    """A fresh ``switchboard serve`` on a free port."""

    name, label = "http", "switchboard serve"

    def command(self, port: int) -> list[str]:
        return [str(VENV_BIN / "switchboard"), "serve", "--host", "127.0.0.1", "--port", str(port),
                "--insecure-no-auth"]

    def ask_at(self, url: str, step: Step) -> dict[str, Any]:
        return ask(url, step)
