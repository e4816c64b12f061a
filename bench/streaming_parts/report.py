"""The tables bench/streaming.py prints, from the records the doors returned."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

from bench.common import format_table

GOAL_S = 0.3  # the goal: RAG TTFT <= prompt read time + 0.3 s


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _s(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


class Records:
    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = [r for r in records if "door" in r and r.get("phase") in ("cold", "warm")]

    def pick(self, door: str, phase: str, key: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["door"] == door and r["phase"] == phase and r["key"] == key
                and not r.get("error")]

    def value(self, door: str, phase: str, key: str, field: str) -> float | None:
        return _median(r.get(field) for r in self.pick(door, phase, key))

    def spawn_ttft(self, key: str) -> float | None:
        """The Python door's cold first token, from its process's spawn (like the CLI's)."""
        return _median(r["since_spawn_s"] - r["total_s"] + r["ttft_s"] for r in self.pick("python", "cold", key)
                       if r.get("ttft_s") is not None and r.get("since_spawn_s") is not None)


def rag_call(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The RAG answer's llama call of a Python-door record (the last one: a retry answers last)."""
    calls = [c for c in rec.get("llama_calls") or [] if c.get("role") == "rag"]
    return calls[-1] if calls else None


def rag_tokens_in(rec: dict[str, Any]) -> int | None:
    entries = [e for e in rec.get("ledger") or [] if e.get("agent") == "rag"]
    return sum(int(e["tokens_in"]) for e in entries) if entries else None


def tables(records: list[dict[str, Any]], keys: list[str], doors: list[str],
           rates: list[dict[str, Any]] | None) -> str:
    rs = Records(records)
    out: list[str] = []
    cold_keys = [k for k in keys if any(r["phase"] == "cold" and r["key"] == k for r in rs.records)]
    warm_keys = [k for k in keys if any(r["phase"] == "warm" and r["key"] == k for r in rs.records)]

    if cold_keys:
        heads = ["cold: seconds", *(h for d in doors for h in (
            ("py TTFT", "py total", "py spawn->tok") if d == "python" else (f"{d} TTFT", f"{d} total")))]
        rows = []
        for k in cold_keys:
            row: list[object] = [k]
            for d in doors:
                row += [_s(rs.value(d, "cold", k, "ttft_s")), _s(rs.value(d, "cold", k, "total_s"))]
                if d == "python":
                    row.append(_s(rs.spawn_ttft(k)))
            rows.append(row)
        out += ["\n== Cold (a fresh process per question, the model not loaded): time to the first answer text "
                "and to the whole answer", format_table(heads, rows),
                "python: from the stream() call, Switchboard already open (py spawn->tok: from the process spawn); "
                "cli: from the spawn of `switchboard ask`; http/ui: from the request / the send click, to a "
                "server just started (listening)."]

    warm_doors = [d for d in doors if d != "cli"]
    if warm_keys and warm_doors:
        heads = ["warm: seconds", *(h for d in warm_doors for h in (f"{d} TTFT", f"{d} total"))]
        rows = [[k, *(_s(rs.value(d, "warm", k, f)) for d in warm_doors for f in ("ttft_s", "total_s"))]
                for k in warm_keys]
        out += ["\n== Warm (same process/server, model loaded, a new conversation, response cache off)",
                format_table(heads, rows)]
        if "cli" in doors:
            out.append("cli: no warm figures -- every `switchboard ask` is a new process that loads the model again.")

    others = [d for d in doors if d in ("http", "ui", "cli")]
    if others and (warm_keys or cold_keys):
        heads = ["over stream(): s", *(f"{d} adds ({'cold' if d == 'cli' else 'warm'})" for d in others),
                 *(f"{d} stream TTFT" for d in others)]
        rows = [[k, *(_s(rs.value(d, "cold" if d == "cli" else "warm", k, "added_s"), True) for d in others),
                 *(_s(rs.value(d, "cold" if d == "cli" else "warm", k, "stream_ttft_s")) for d in others)]
                for k in keys]
        out += ["\n== What each door adds to Switchboard.stream, in the same turn (door TTFT minus that turn's "
                "stream() TTFT, timed inside the door's process)",
                format_table(heads, rows),
                "stream TTFT: from the door's stream() call to its first Token event, in the door's own process "
                "(bench/streaming_parts/stream_clock). adds: the rest of the door's TTFT -- for http the request, "
                "its checks and the first chunk; for ui the send click, Chainlit, the socket and the browser "
                "showing the text; for cli (cold) the interpreter, imports, opening Switchboard and printing."]

    if "python" in doors and (warm_keys or cold_keys):
        heads = ["door - python: s", "py Token", "py text"]
        cross = [d for d in doors if d in ("http", "ui")]
        heads += [f"{d} - py Token" for d in cross] + ["http - py text"] * ("http" in cross)
        rows = []
        for k in keys:
            tok, txt = rs.value("python", "warm", k, "ttft_s"), rs.value("python", "warm", k, "first_text_s")
            row = [k, _s(tok), _s(txt), *(_s(_diff(rs.value(d, "warm", k, "ttft_s"), tok), True) for d in cross)]
            if "http" in cross:
                row.append(_s(_diff(rs.value("http", "warm", k, "ttft_s"), txt), True))
            rows.append(row)
        out += ["\n== Door TTFT minus the Python door's (warm; different processes and turns, so the model's own "
                "variation is in it)", format_table(heads, rows),
                "py Token: first Token event; py text: first text a plain-text door sends (lifecycle.TextStream: "
                "several parts go out part by part, each once it and those before it are done)."]

    out += _arrival(rs, keys, doors)
    if "python" in doors:
        out += _turns(rs, keys)
    if "rag" in keys:
        out += _rag(rs, doors, rates)
    return "\n".join(out)


def _arrival(rs: Records, keys: list[str], doors: list[str]) -> list[str]:
    """How many pieces the answer's text came in before it was complete, per door."""
    def cell(recs: list[dict[str, Any]], count: str = "updates", last: str = "last_update_s",
             first: str = "ttft_s") -> str:
        if not recs:
            return "-"
        r = recs[-1]
        n = r.get(count) or 0
        if not n:
            return "0 (all at the end)"
        spread = (r.get(last) or 0) - (r.get(first) or 0)
        return f"{n} over {spread:.1f} s"

    heads, rows = ["text pieces before the end"], []
    cols: list[tuple[str, str, dict[str, str]]] = []
    for d in doors:
        if d == "python":
            cols += [("py Token", "python", {}),
                     ("py text", "python", {"count": "text_updates", "last": "last_text_s", "first": "first_text_s"})]
        else:
            cols.append((f"{d}{' (cold)' if d == 'cli' else ''}", d, {}))
    heads += [c[0] for c in cols]
    for k in keys:
        row: list[object] = [k]
        for _, d, fields in cols:
            row.append(cell(rs.pick(d, "cold" if d == "cli" else "warm", k), **fields))
        rows.append(row)
    return ["\n== How the answer's text arrives (warm; the CLI cold): pieces before the answer was complete, and the "
            "time from the first to the last", format_table(heads, rows),
            "py Token: Token events; py text: TextStream deltas (what the CLI and HTTP send); http: content deltas "
            "(the rest of the answer, sent with the end, counts); "
            "cli: stdout reads holding answer text (a read may hold several pieces); ui: reply texts seen in the "
            "DOM. A piece that only comes with the end (the HTTP final chunk, the footer) is not counted."]


def _turns(rs: Records, keys: list[str]) -> list[str]:
    rows = []
    for phase in ("cold", "warm"):
        for k in keys:
            recs = rs.pick("python", phase, k)
            if not recs:
                continue
            r = recs[-1]
            calls = r.get("llama_calls") or []
            rows.append([f"{phase} {k}", "+".join(r.get("subtasks") or []), len(r.get("ledger") or []),
                         sum(int(e.get("tokens_in") or 0) for e in r.get("ledger") or []),
                         sum(int(c.get("n_eval") or 0) for c in calls),
                         sum(int(e.get("tokens_out") or 0) for e in r.get("ledger") or []),
                         _s(r.get("answer_call_s")), " ".join(str(r.get("answer") or "").split())[:48]])
    if not rows:
        return []
    return ["\n== The turns (Python door): parts, LLM calls, prompt tokens (ledger) and those llama.cpp evaluated "
            "(the rest was in the role's KV cache), output tokens, when the answer's model call started",
            format_table(["turn", "parts", "calls", "prompt", "evaluated", "out", "answer call s", "answer"], rows)]


def _rag(rs: Records, doors: list[str], rates: list[dict[str, Any]] | None) -> list[str]:
    out = ["\n== RAG question: TTFT against the prompt read (goal: TTFT <= prompt read time + 0.3 s)"]
    runs = [r for r in rates or [] if r.get("tokens_per_s")]
    tps = sum(r["n_tokens"] for r in runs) / sum(r["s"] for r in runs) if runs else None
    if tps:
        out.append("prompt-only llama call (a Llama of its own, empty KV cache), right before and after the warm RAG "
                   "question: " + "; ".join(f"{r['n_tokens']} tokens in {r['s']:.2f} s ({r['tokens_per_s']:.1f}/s, "
                                           f"load {r['load1']:.2f})" for r in runs)
                   + f" -> {tps:.1f} prompt tokens/s (used below, for the cold rows too)")
    else:
        errors = [r["error"] for r in rates or [] if r.get("error")]
        out.append("no prompt-only llama call was timed (the Python door times it next to its warm RAG question)"
                   + (f": {errors[0]}" if errors else ""))
    rows, breakdown = [], []
    for phase in ("cold", "warm"):
        py = rs.pick("python", phase, "rag")
        call = rag_call(py[-1]) if py else None
        n_eval = call.get("n_eval") if call else None
        for d in doors:
            recs = rs.pick(d, phase, "rag")
            if not recs:
                continue
            ttft = _median(r.get("ttft_s") for r in recs)
            t_in = _median(rag_tokens_in(r) for r in recs)
            read = t_in / tps if t_in is not None and tps else None
            read_eval = n_eval / tps if n_eval is not None and tps else None
            rows.append([f"{phase} {d}", _s(ttft), t_in if t_in is not None else "-", n_eval if n_eval is not None else "-",
                         _s(read), _s(_diff(ttft, read), True), _s(read_eval), _s(_diff(ttft, read_eval), True)])
        if call and "t_eval" in call and py[-1].get("ttft_s") is not None:
            r = py[-1]
            end = call["t_eval"] + call["eval_s"]
            breakdown.append([phase, _s(r.get("answer_call_s")), _s(call["t_eval"]), call["n_eval"], call["n_prompt"],
                              _s(call["eval_s"]), f"{call['n_eval'] / call['eval_s']:.1f}" if call["eval_s"] else "-",
                              _s(r["ttft_s"] - end), _s(r["ttft_s"]), _s(r["ttft_s"] - call["eval_s"]),
                              "yes" if r["ttft_s"] - call["eval_s"] <= GOAL_S else "no"])
    if rows:
        out += [format_table(["turn", "TTFT", "prompt tok", "evaluated", "read s", "gap", "read s (eval)",
                              "gap (eval)"], rows),
                "prompt tok: tokens_in of the rag call (ledger); read s = prompt tok / prompt tokens/s, gap = TTFT - "
                "read s. evaluated: the prompt tokens llama.cpp actually read (the rest was still in the rag role's KV "
                "cache; measured in the Python door, the same for every door: same questions, same order); "
                "read s (eval) and gap (eval) use those."]
    if breakdown:
        out += ["\nRAG TTFT in the Python door, measured inside the turn (llama.cpp's prompt read timed in-process):",
                format_table(["phase", "rag call s", "read starts s", "evaluated", "of prompt", "read s", "tok/s",
                              "read end->Token s", "TTFT", "TTFT - read", f"<= {GOAL_S} s"], breakdown),
                "rag call s: the question to the rag model call (triage, retrieval); read starts s: llama.cpp starts "
                "reading the prompt (cold: after loading the model); TTFT - read: all of the TTFT that is not the "
                "prompt read."]
    return out
