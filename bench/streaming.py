"""Streaming latency per door on the local tier: time to the first answer text and to the whole answer.

For the demo questions -- a one-part general question, a one-part RAG question, a one-part SQL
question and a two-part question (SQL + RAG) -- on the default local model (llama.cpp, no hosted
model keys), through each door:

* **python** -- ``Switchboard.stream`` in a fresh worker process: the first ``Token`` event (answer
  text as the model writes it), also the first text a plain-text door would send
  (``lifecycle.TextStream``), from the ``stream()`` call;
* **cli** -- ``switchboard ask QUESTION`` as a subprocess: the first byte of the answer on stdout,
  from the spawn (cold only: every ``ask`` is a new process that loads the model again);
* **http** -- ``switchboard serve --insecure-no-auth``, streamed chat completions (httpx): the first
  ``chat.completion.chunk`` with content, from sending the request;
* **ui** -- ``chainlit run app.py`` in headless Chromium (Playwright): from the send click to the
  first visible text of the reply (timed in the page).

**Cold**: the first question of a fresh process (the model not loaded; one process per question).
**Warm**: the same process or server goes on, the model loaded; before each measured question a
primer question for the same agent (not measured) leaves that agent's fixed prompt prefix in the
llama.cpp KV cache but not this question's text; each turn is a new conversation; the response
cache is off (``SWITCHBOARD_CACHE_TTL_S=0``) so no answer comes from it. Every door runs the same
questions in the same order, so the model's state is the same when each door answers a question.
The doors take turns -- per cold question, then per warm step -- one at a time (the others' processes
idle), so a change in the machine's load hits them alike (bench/streaming_parts/plan.py). Prints what each door adds to ``Switchboard.stream`` in the
same turn (each door's process times its own ``stream()`` call: bench/streaming_parts/stream_clock)
and, for the RAG question, the prompt tokens of its answer call, the
runtime's prompt tokens/s (a prompt-only llama call, timed) and the gap TTFT - prompt read time
(the goal: RAG TTFT <= prompt read time + 0.3 s). All processes share one fresh data dir, set up
(knowledge base ingested, classifier, runtime self-check) before anything is measured.

    uv run python bench/streaming.py [--quick] [--doors python,cli,http,ui] [--json PATH]

A full run takes ~10-15 minutes on 2 cores; ``--quick`` asks the general and RAG questions only,
cold for the RAG question only (~4 minutes). The machine load is printed: latencies on a shared
machine move with it. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):  # run as a script; ahead of site-packages, which has a stray `tests` (literalai)
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")  # Chroma: no telemetry calls from a benchmark

from bench.common import finish_run, machine_load  # noqa: E402
from bench.streaming_parts import cli_door, http_door, python_door, ui_door  # noqa: E402
from bench.streaming_parts.plan import QUESTIONS, Step, cold_steps, warm_steps  # noqa: E402
from bench.streaming_parts.report import tables  # noqa: E402

DOORS = ("python", "cli", "http", "ui")


def progress(rec: dict[str, Any]) -> None:
    if "door" not in rec:
        return
    rec.setdefault("load1", os.getloadavg()[0])
    line = f"  {rec['door']:<6} {rec['phase']:<6} {rec['key']:<8}"
    if rec.get("error"):
        print(f"{line} failed: {rec['error']}", flush=True)
        return
    ttft, total = rec.get("ttft_s"), rec.get("total_s")
    line += f" first text {ttft:6.2f} s" if ttft is not None else " first text      - "
    line += f"  answer {total:6.2f} s" if total is not None else "  answer      -  "
    if rec.get("server_start_s") is not None:
        line += f"  (server started in {rec['server_start_s']:.1f} s)"
    line += f"  load {rec['load1']:.2f}"
    if rec["phase"] == "primer":
        line += "  (primer, not measured)"
    print(line, flush=True)


def make_door(door: str, data_dir: Path, logs: Path, browser: Any) -> Any:
    if door == "python":
        return python_door.PythonDoor(Path(__file__), data_dir, logs)
    if door == "cli":
        return cli_door.CliDoor(data_dir, logs)
    if door == "http":
        return http_door.HttpDoor(data_dir, logs)
    return ui_door.UiDoor(browser, data_dir, logs)


def ask(door: Any, step: Step, records: list[dict[str, Any]]) -> None:
    try:
        rec = door.ask(step)
    except Exception as exc:  # noqa: BLE001 - one door's failure is reported, the others still run
        rec = {"door": door.name, **step.as_dict(), "error": f"{type(exc).__name__}: {str(exc)[-600:]}"}
    progress(rec)
    records.append(rec)


def start(door: Any, records: list[dict[str, Any]]) -> bool:
    try:
        opened = door.start()
    except Exception as exc:  # noqa: BLE001
        msg = f"{type(exc).__name__}: {str(exc)[-600:]}"
        print(f"  {door.name}: could not start: {msg}", flush=True)
        records.append({"door": door.name, "phase": "start", "key": "-", "error": msg})
        return False
    if isinstance(opened, dict) and "open_s" in opened:
        print(f"  python worker: Switchboard.open {opened['open_s']:.1f} s "
              f"({opened['since_spawn_s']:.1f} s after the spawn)", flush=True)
    return True


def run(args: argparse.Namespace, doors: list[str], data_dir: Path, logs: Path, browser: Any,
        records: list[dict[str, Any]], rates: list[dict[str, Any]]) -> None:
    """Cold: per question, each door in a fresh process. Warm: the processes of the last cold
    question (or fresh ones) take turns, step by step."""
    keep: list[Any] = []
    warm = [d for d in doors if d != "cli"] if args.repeat > 0 else []
    try:
        for n, step in enumerate(cold_steps(args.cold)):
            print(f"\n== cold: {step.key} ({step.question!r}); {machine_load()}", flush=True)
            for name in doors:
                door = make_door(name, data_dir, logs, browser)
                if not start(door, records):
                    continue
                try:
                    ask(door, step, records)
                finally:
                    if n == len(args.cold) - 1 and name in warm:
                        keep.append(door)
                    else:
                        door.stop()
        if not warm:
            return
        if not keep:  # no cold step: fresh processes for the warm steps
            for name in warm:
                door = make_door(name, data_dir, logs, browser)
                if start(door, records):
                    keep.append(door)
        print(f"\n== warm: {', '.join(d.name for d in keep)} take turns; {machine_load()}", flush=True)
        for step in warm_steps(args.questions, args.repeat):
            for door in keep:
                timed = door.name == "python" and step.phase == "warm" and step.key == "rag"
                if timed:  # the runtime's prompt rate, right before and after the warm RAG question
                    rates.append(prompt_rate(door))
                ask(door, step, records)
                if timed:
                    rates.append(prompt_rate(door))
    finally:
        for door in keep:
            door.stop()


def prompt_rate(door: Any) -> dict[str, Any]:
    try:
        rate = dict(door.prompt_rate())
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}
    if rate.get("tokens_per_s"):
        print(f"  python prompt-only llama call: {rate['n_tokens']} tokens in {rate['s']:.2f} s, "
              f"{rate['tokens_per_s']:.1f} tokens/s  load {rate['load1']:.2f}", flush=True)
    return rate


def main(args: argparse.Namespace) -> dict[str, Any]:
    data_root = Path(tempfile.mkdtemp(prefix="sb-bench-streaming-"))
    data_dir, logs = data_root / "data", data_root / "logs"
    logs.mkdir(parents=True)
    result: dict[str, Any] = {"machine_before": machine_load(), "doors": args.doors, "questions": args.questions,
                              "cold_questions": args.cold, "repeat": args.repeat, "data_dir": str(data_root)}
    records: list[dict[str, Any]] = []
    rates: list[dict[str, Any]] = []
    notes: list[str] = []
    print(f"streaming bench: doors {', '.join(args.doors)}; questions {', '.join(args.questions)} "
          f"(cold: {', '.join(args.cold) or 'none'}; warm x{args.repeat}); {machine_load()}", flush=True)
    try:
        result["setup_s"] = python_door.setup(Path(__file__), data_dir, logs)
        print(f"setup (data dir: knowledge base ingest, classifier, runtime self-check): {result['setup_s']:.1f} s",
              flush=True)
        browser, pw = None, None
        if "ui" in args.doors:
            why = ui_door.available()
            if why is None:
                from playwright.sync_api import sync_playwright

                pw = sync_playwright().start()
                browser = pw.chromium.launch(executable_path=str(ui_door.CHROMIUM), args=ui_door.CHROMIUM_ARGS)
            else:
                notes.append(f"ui door skipped: {why}")
                print(notes[-1], flush=True)
        ran = [d for d in args.doors if d != "ui" or browser is not None]
        try:
            run(args, ran, data_dir, logs, browser, records, rates)
        finally:
            if browser is not None:
                browser.close()
            if pw is not None:
                pw.stop()
        result["machine_after"] = machine_load()
        report = tables(records, args.questions, ran, rates)
        print(report)
        print(f"\nmachine: before {result['machine_before']}; after {result['machine_after']}")
        for r in records:
            if r.get("error"):
                print(f"failed: {r['door']} {r.get('phase')} {r.get('key')}: {r['error'][:300]}")
        for note in notes:
            print(note)
        result.update(records=records, prompt_rate=rates, notes=notes, report=report)
    finally:
        if args.keep:
            print(f"data dir and logs kept in {data_root}")
        else:
            shutil.rmtree(data_root, ignore_errors=True)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="the general and RAG questions only, cold for the RAG question only")
    ap.add_argument("--doors", default=",".join(DOORS), help="comma-separated, of: " + ",".join(DOORS))
    ap.add_argument("--questions", help="comma-separated, of: " + ",".join(QUESTIONS) + " (default: all; quick: general,rag)")
    ap.add_argument("--repeat", type=int, default=1, help="warm rounds, medians shown (0: cold only)")
    ap.add_argument("--no-cold", action="store_true", help="warm figures only")
    ap.add_argument("--json", type=Path, help="write all records and figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the data dir and the processes' logs")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: the Python door's worker process
    args = ap.parse_args(argv)
    if args.worker:
        return args
    args.doors = [d.strip() for d in args.doors.split(",") if d.strip()]
    args.questions = [q.strip() for q in (args.questions or ("general,rag" if args.quick else ",".join(QUESTIONS))).split(",")
                      if q.strip()]
    for name, chosen, allowed in (("door", args.doors, DOORS), ("question", args.questions, QUESTIONS)):
        if bad := [c for c in chosen if c not in allowed]:
            ap.error(f"unknown {name}(s): {', '.join(bad)}")
    args.cold = [] if args.no_cold else (args.questions[-1:] if args.quick else list(args.questions))
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        python_door.main_worker(arguments.worker)
        raise SystemExit(0)
    began = time.monotonic()
    finish_run(main(arguments), began, arguments.json)
