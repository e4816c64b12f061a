"""The Python door: ``Switchboard.stream`` in a fresh worker process (``bench/streaming.py --worker``),
asked one step at a time over stdin, so the doors can take turns.

Per turn it records, from the ``stream()`` call: the first ``Token`` event (answer text as the model
writes it), the first text a plain-text door would send (``lifecycle.TextStream``: what the CLI
prints and the HTTP API sends; a several-part answer is sent part by part, once each part and
those before it are done), when the answer's model call started (``ModelCalled``), and the end
(``Answer``). llama.cpp's ``Llama.generate``/``eval`` are wrapped (in this process only) to time
each call's prompt read: how many prompt tokens it had, how many it evaluated (the rest was
still in that role's KV cache) and how long that took. Asked to, it times a prompt-only llama call
on a ``Llama`` of its own (the runtime's prompt tokens/s under the machine's load of that moment;
the agents' KV caches are left as they were).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.streaming_parts.plan import REPO, Step, door_env, stop, tail

MARK = "@@bench "  # the worker's result lines on stdout start with this


# --- the worker (a fresh process) ----------------------------------------------------------------
class LlamaProbe:
    """Times each llama.cpp call's prompt read: wraps ``Llama.generate`` and ``Llama.eval``."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.eval: Any = None  # the unwrapped Llama.eval

    def install(self) -> None:
        from llama_cpp import Llama

        from tools.models import local_llm

        probe, generate, evaluate = self, Llama.generate, Llama.eval
        self.eval = evaluate

        def role_of(llm: Any) -> str:
            return next((role for (_, role), v in local_llm._POOL.items() if v is llm), "?")

        def wrapped_generate(llm: Any, tokens: Any, *args: Any, **kwargs: Any) -> Any:
            llm._bench_call = {"role": role_of(llm), "n_prompt": len(tokens), "cached_before": int(llm.n_tokens),
                               "t_call": probe.now()}
            probe.calls.append(llm._bench_call)
            return generate(llm, tokens, *args, **kwargs)

        def wrapped_eval(llm: Any, tokens: Any) -> Any:
            call = getattr(llm, "_bench_call", None)
            if call is None or "n_eval" in call:
                return evaluate(llm, tokens)
            started = probe.now()
            result = evaluate(llm, tokens)
            call.update(n_eval=len(tokens), t_eval=started, eval_s=probe.now() - started)
            return result

        Llama.generate, Llama.eval = wrapped_generate, wrapped_eval  # type: ignore[method-assign,assignment]

    def now(self) -> float:
        return time.monotonic() - self.t0

    def since(self, t0: float) -> list[dict[str, Any]]:
        """The calls made since ``t0`` (probe time), with times relative to it."""
        out = []
        for c in self.calls:
            if c["t_call"] >= t0:
                out.append({**c, "t_call": c["t_call"] - t0, **({"t_eval": c["t_eval"] - t0} if "t_eval" in c else {})})
        return out


def emit(obj: dict[str, Any]) -> None:
    print(MARK + json.dumps(obj), flush=True)


async def stream_turn(sb: Any, step: Step, probe: LlamaProbe) -> dict[str, Any]:
    from graphs.support import SPECIALISTS
    from switchboard import lifecycle

    text = lifecycle.TextStream({cls.name: cls.label for cls in SPECIALISTS})
    rec: dict[str, Any] = {"door": "python", **step.as_dict(), "ttft_s": None, "first_text_s": None,
                           "answer_call_s": None, "total_s": None}
    t0 = time.monotonic()
    p0 = probe.now()
    turn = None
    async for event in sb.stream(step.question, thread_id=f"bench-{uuid.uuid4().hex[:12]}"):
        now = time.monotonic() - t0
        if isinstance(event, lifecycle.ModelCalled) and event.answer and rec["answer_call_s"] is None:
            rec["answer_call_s"], rec["answer_agent"] = now, event.agent
        if isinstance(event, lifecycle.Token) and event.text:
            if rec["ttft_s"] is None:
                rec["ttft_s"], rec["ttft_agent"] = now, event.agent
            rec["updates"], rec["last_update_s"] = rec.get("updates", 0) + 1, now
        if text.feed(event):
            if rec["first_text_s"] is None:
                rec["first_text_s"] = now
            rec["text_updates"], rec["last_text_s"] = rec.get("text_updates", 0) + 1, now
        if isinstance(event, (lifecycle.Answer, lifecycle.Paused, lifecycle.Failed)):
            if isinstance(event, lifecycle.Answer) and event.earlier:
                continue
            rec["total_s"], turn = now, event.turn
            rec["outcome"] = type(event).__name__
            if isinstance(event, lifecycle.Failed):
                rec["error"] = event.message
    if rec["first_text_s"] is None and rec["total_s"] is not None:  # nothing before the end: the rest at once
        rec["first_text_s"] = rec["total_s"]
    if turn is not None:
        rec["answer"] = turn.answer
        rec["subtasks"] = [s.agent for s in turn.subtasks]
        rec["ledger"] = [{k: e.get(k) for k in ("agent", "role", "model", "tokens_in", "tokens_out", "latency_ms",
                                                "cached", "subtask_id")} for e in turn.ledger]
    rec["llama_calls"] = probe.since(p0)
    return rec


def prompt_rate(probe: LlamaProbe, n_tokens: int, settings: Any) -> dict[str, Any]:
    """Time a prompt-only llama call: ``eval`` of ``n_tokens`` help-center tokens from an empty KV
    cache, on a ``Llama`` of its own (the agents' KV caches stay as they are); prompt tokens/s."""
    from tools.models import local_llm

    if not local_llm._POOL:
        return {"error": "no local model was loaded"}
    path = next(iter(local_llm._POOL))[0]
    llm = local_llm._llama(path, "bench-prompt-rate", settings.local_ctx, settings.local_threads)
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "knowledge" / "helpcenter").glob("*.md")))
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)[:n_tokens]
    with local_llm._COMPUTE_LOCK:
        llm.reset()
        started = time.monotonic()
        probe.eval(llm, tokens)
        took = time.monotonic() - started
        llm.reset()
    return {"n_tokens": len(tokens), "s": took, "tokens_per_s": len(tokens) / took, "load1": os.getloadavg()[0]}


async def worker(config: dict[str, Any]) -> None:
    """Open Switchboard, then run what stdin asks, one JSON line at a time (a step, or a prompt-rate
    timing), answering each with one result line on stdout; stop at EOF."""
    spawned = float(config["spawned_at"])
    probe = LlamaProbe()
    started = time.monotonic()
    from switchboard.api import Switchboard
    from switchboard.settings import Settings

    probe.install()
    async with Switchboard.open(Settings()) as sb:
        if config.get("setup"):  # the one-time setup every door then finds done: ingest, classifier, runtime check
            _ = sb.services.kb, sb.services.triage, sb.services.db
            for spec in sb.services.registry.available():
                if spec.provider == "llamacpp":
                    _ = getattr(sb.services.registry.handle(spec.name, role="bench-setup").chat, "_model", None)
            emit({"setup_s": time.monotonic() - started})
            return
        emit({"opened": True, "open_s": time.monotonic() - started, "since_spawn_s": time.time() - spawned})
        while line := await asyncio.to_thread(sys.stdin.readline):
            order = json.loads(line)
            if "prompt_rate" in order:
                emit({"prompt_rate": prompt_rate(probe, _last_rag_prompt(probe), sb.services.settings)})
                continue
            rec = await stream_turn(sb, Step(**order["step"]), probe)
            rec["since_spawn_s"] = time.time() - spawned
            rec["load1"] = os.getloadavg()[0]
            emit(rec)


def _last_rag_prompt(probe: LlamaProbe) -> int:
    """As many tokens as the last RAG prompt had (about the size of the next one)."""
    rag = [c["n_prompt"] for c in probe.calls if c.get("role") == "rag"]
    return rag[-1] if rag else 465


# --- the parent: drives a worker ------------------------------------------------------------------
class PythonDoor:
    """A fresh worker process (``bench/streaming.py --worker``), asked one step at a time."""

    name = "python"

    def __init__(self, script: Path, data_dir: Path, log_dir: Path) -> None:
        self.script, self.data_dir, self.log_dir = script, data_dir, log_dir
        self.proc: subprocess.Popen[str] | None = None
        self.log = log_dir / f"python-{int(time.time() * 1000)}.log"
        self.opened: dict[str, Any] = {}

    def start(self, setup: bool = False) -> dict[str, Any]:
        config = json.dumps({"spawned_at": time.time(), "setup": setup})
        with open(self.log, "a") as errors:
            self.proc = subprocess.Popen([sys.executable, str(self.script), "--worker", config], cwd=REPO,
                                         env=door_env(self.data_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=errors, text=True, start_new_session=True)
        self.opened = self._read()
        return self.opened

    def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return dict(json.loads(line[len(MARK):]))
        raise RuntimeError(f"the Python door's worker exited ({self.proc.wait()}): {tail(self.log)}")

    def _send(self, order: dict[str, Any]) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(order) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def ask(self, step: Step) -> dict[str, Any]:
        return self._send({"step": step.as_dict()})

    def prompt_rate(self) -> dict[str, Any]:
        return dict(self._send({"prompt_rate": True})["prompt_rate"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # EOF: the worker closes Switchboard and exits
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        stop(self.proc)
        self.proc = None


def setup(script: Path, data_dir: Path, log_dir: Path) -> float:
    """Prepare the shared data dir in a worker (knowledge base, classifier, runtime self-check)."""
    door = PythonDoor(script, data_dir, log_dir)
    try:
        return float(door.start(setup=True)["setup_s"])
    finally:
        door.stop()


def main_worker(config: str) -> None:
    asyncio.run(worker(json.loads(config)))
