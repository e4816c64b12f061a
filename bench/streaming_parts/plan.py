"""What every door runs, in the same order, so the model's state (loaded or not, the llama.cpp
KV cache of each agent role) is the same when each door answers a given question.

Cold: for each question, each door in turn starts a fresh process and answers it first (the
model is not loaded); that process stops, except after the last cold question, where the doors
that have a warm case (not the CLI) keep theirs for the warm steps. Warm: before each measured
question a *primer* (another question for the same agent, not measured) loads that agent's model
and leaves its fixed prompt prefix in the KV cache but not this question's text, so a warm
question reads the part of its prompt a real next question would read; every turn is a new
conversation and the response cache is off (``SWITCHBOARD_CACHE_TTL_S=0``). The doors take turns
step by step (python, then http, then ui), so a change of the machine's load (it is shared) hits
them alike; only one door works at a time, the others' processes idle.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"

QUESTIONS = {  # the demo questions on the local tier
    "general": "Hello! What can you help me with?",
    "rag": "What is your refund policy?",
    "sql": "How many customers are from Brazil?",
    "two-part": "How many customers do we have, and what is your refund policy?",
}
PRIMERS = {  # asked (not measured) before the warm question of that key: same agent, other text
    "general": "Hi there!",
    "rag": "What are your support hours?",
    "sql": "How many employees are there?",
}
TURN_TIMEOUT_S = 420.0
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Step:
    phase: str  # cold | warm | primer
    key: str  # a QUESTIONS key (a primer: the key it primes)
    question: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cold_steps(cold_keys: list[str]) -> list[Step]:
    return [Step("cold", k, QUESTIONS[k]) for k in cold_keys]


def warm_steps(keys: list[str], repeat: int) -> list[Step]:
    """Each round: every question, after its primer."""
    steps = []
    for _ in range(repeat):
        for k in keys:
            if k in PRIMERS:
                steps.append(Step("primer", k, PRIMERS[k]))
            steps.append(Step("warm", k, QUESTIONS[k]))
    return steps


STREAM_CLOCK = Path(__file__).resolve().parent / "stream_clock"  # its sitecustomize times Switchboard.stream


def door_env(data_dir: Path, clock: Path | None = None) -> dict[str, str]:
    """The environment of every door's process: the bench's data dir, the response cache off, no
    recording, the local tier (no hosted-model keys), no Chainlit CI mode; with ``clock``, the
    process also writes there its ``Switchboard.stream`` time to first token per turn."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SWITCHBOARD_DATA_DIR", "SWITCHBOARD_CACHE_TTL_S", "SWITCHBOARD_RECORD_MODE",
                        "SWITCHBOARD_CASSETTE_PATH", "SWITCHBOARD_API_KEYS", "SWITCHBOARD_API_KEYS_FILE",
                        "SWITCHBOARD_UI_USERS", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "CI")
           and not k.startswith("CHAINLIT_")}
    env.update(SWITCHBOARD_DATA_DIR=str(data_dir), SWITCHBOARD_CACHE_TTL_S="0", SWITCHBOARD_RECORD_MODE="off",
               ANONYMIZED_TELEMETRY="False", PYTHONUNBUFFERED="1")
    if clock is not None:
        env["BENCH_STREAM_CLOCK"] = str(clock)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(STREAM_CLOCK), env.get("PYTHONPATH", "")) if p)
    return env


def same_turn(rec: dict[str, Any], clock: Path, offset: int) -> dict[str, Any]:
    """Add to a door's record the stream's own time to first token in that turn (what the door's
    process wrote to ``clock`` after ``offset``) and what the door added to it."""
    lines = clock.read_bytes()[offset:].splitlines() if clock.exists() else []
    if lines:
        rec["stream_ttft_s"] = json.loads(lines[-1])["ttft_s"]
        if rec.get("ttft_s") is not None:
            rec["added_s"] = rec["ttft_s"] - rec["stream_ttft_s"]
    return rec


def clock_size(clock: Path) -> int:
    return clock.stat().st_size if clock.exists() else 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_listening(proc: subprocess.Popen[Any], port: int, log: Path, what: str) -> float:
    """Seconds until ``proc`` listens on ``port``; raises with its log's tail if it exits or stalls."""
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT_S:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {tail(log)}")
        if port_open(port):
            return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {START_TIMEOUT_S:.0f} s: {tail(log)}")


def stop(proc: subprocess.Popen[Any] | None) -> None:
    """Stop a process this bench started (its own session): SIGINT, then SIGKILL to its group."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def tail(log: Path, n: int = 1500) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class ServerDoor:
    """A door that is a server: a fresh process on a free port (``command``), asked over
    ``http://127.0.0.1:<port>`` by ``ask_at``; the first turn's record carries the server's
    start-up time."""

    name = ""
    label = ""  # how errors name the process

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        self.data_dir, self.log_dir = data_dir, log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.start_s: float | None = None
        self.clock = log_dir / f"{self.name}-stream-clock.jsonl"

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def ask_at(self, url: str, step: Step) -> dict[str, Any]:
        raise NotImplementedError

    def start(self) -> None:
        self.port = free_port()
        log = self.log_dir / f"{self.name}-{self.port}.log"
        with open(log, "w") as out:
            self.proc = subprocess.Popen(self.command(self.port), cwd=REPO, env=door_env(self.data_dir, self.clock),
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.start_s = wait_listening(self.proc, self.port, log, self.label)
        except Exception:
            self.stop()
            raise

    def ask(self, step: Step) -> dict[str, Any]:
        offset = clock_size(self.clock)
        rec = same_turn(self.ask_at(f"http://127.0.0.1:{self.port}", step), self.clock, offset)
        if self.start_s is not None:  # the first turn of this server
            rec["server_start_s"], self.start_s = self.start_s, None
        return rec

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None
