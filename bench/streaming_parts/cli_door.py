"""The CLI door: ``switchboard ask QUESTION --thread ID`` as a subprocess, one process per question.

Measured from the spawn: the first byte on stdout (``ask`` prints nothing before the answer, whose
text it prints as it arrives), each later read with answer text, the first summary line (``  rag  <model>  in=N out=M ...``: the
answer is complete) and the exit. Every ``ask`` is a fresh process that loads the model, so the
CLI has no warm case: its figures are cold, from the spawn (interpreter start, imports, opening
Switchboard, loading the model included).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from bench.streaming_parts.plan import REPO, TURN_TIMEOUT_S, VENV_BIN, Step, clock_size, door_env, same_turn, stop, tail

SUMMARY = re.compile(rb"^  (\w+)\s+\S+\s+in=(\d+)\s+out=(\d+)", re.M)


def run_step(data_dir: Path, step: Step, log_dir: Path) -> dict[str, Any]:
    log = log_dir / f"cli-{int(time.time() * 1000)}.log"
    clock = log_dir / "cli-stream-clock.jsonl"
    offset = clock_size(clock)
    rec: dict[str, Any] = {"door": "cli", **step.as_dict(), "ttft_s": None, "total_s": None, "exit_s": None}
    out = b""
    proc = None
    with open(log, "wb") as errors:
        try:
            started = time.monotonic()
            proc = subprocess.Popen([str(VENV_BIN / "switchboard"), "ask", step.question,
                                     "--thread", f"bench-{uuid.uuid4().hex[:12]}"],
                                    cwd=REPO, env=door_env(data_dir, clock), stdout=subprocess.PIPE, stderr=errors,
                                    start_new_session=True)
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            while True:
                chunk = os.read(fd, 65536)
                now = time.monotonic() - started
                if not chunk:
                    break
                if rec["ttft_s"] is None and chunk.strip():
                    rec["ttft_s"] = now
                out += chunk
                if rec["total_s"] is None and SUMMARY.search(out):
                    rec["total_s"] = now
                elif rec["total_s"] is None and chunk.strip():  # a piece of the answer (reads may merge pieces)
                    rec["updates"], rec["last_update_s"] = rec.get("updates", 0) + 1, now
                if now > TURN_TIMEOUT_S:
                    raise TimeoutError(f"switchboard ask took over {TURN_TIMEOUT_S:.0f} s")
            code = proc.wait(timeout=60)
            rec["exit_s"] = time.monotonic() - started
            rec["exit_code"] = code
        finally:
            stop(proc)
    text = out.decode("utf-8", errors="replace")
    first = SUMMARY.search(out)
    rec["answer"] = text[: first.start()].strip() if first else text.strip()
    rec["ledger"] = [{"agent": m[0].decode(), "tokens_in": int(m[1]), "tokens_out": int(m[2])}
                     for m in SUMMARY.findall(out)]  # per part (its calls summed), as `ask` prints it
    if rec.get("exit_code") or first is None:
        rec["error"] = f"exit {rec.get('exit_code')}: {tail(log, 600)}"
    return same_turn(rec, clock, offset)


class CliDoor:
    """Nothing lives between turns: each ``ask`` is its own process."""

    name = "cli"

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        self.data_dir, self.log_dir = data_dir, log_dir

    def start(self) -> None:
        pass

    def ask(self, step: Step) -> dict[str, Any]:
        return run_step(self.data_dir, step, self.log_dir)

    def stop(self) -> None:
        pass
