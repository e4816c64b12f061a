"""A business Switchboard has never seen: routing and answers on examples/kennel after `switchboard init`.

The kennel (examples/kennel: Spider's dog_kennels database, CC BY-SA 4.0, and a help center and
questions written for this project) is set up the way a new user would: ``switchboard init
--database ... --docs ... --name ... --yes`` in a fresh data dir, timed. Then, for the questions of
``examples/kennel/questions.yaml`` -- ``heldout`` (written before anything was tuned; the figure
to quote) and ``tune`` (looked at while tuning), reported apart:

* **route-set accuracy**: triage's set of specialists equals the expected one (classifier only,
  and with the local LLM for unsure clauses, as it runs by default);
* **answer accuracy** (``--answers``): the whole turn on the local model; correct when the answer
  holds every value of the gold query's result (SQL parts) and every expected phrase (help-center
  parts), case-insensitive.

``--as-before`` sets the kennel up as a user could before ``init`` existed: only
``SWITCHBOARD_DATABASE_URL`` and ``switchboard ingest`` of the docs beside the demo's, the demo
store's prompts and routes. Run it with the old code on ``PYTHONPATH`` for the before figures.

    uv run python bench/second_domain.py [--answers] [--as-before] [--sets heldout,tune] [--json PATH]

Routing takes about a minute; ``--answers`` about 10 minutes on 2 cores. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
KENNEL = ROOT / "examples" / "kennel"
DB = KENNEL / "kennel.sqlite"
NAME = "Paws & Stay Kennels"
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def questions(sets: list[str]) -> dict[str, list[dict[str, Any]]]:
    raw = yaml.safe_load((KENNEL / "questions.yaml").read_text(encoding="utf-8"))
    return {s: raw[s] for s in sets}


def gold_values(sql: str) -> list[str]:
    with sqlite3.connect(f"file:{DB}?mode=ro", uri=True) as con:
        rows = con.execute(sql).fetchall()
    return [str(v) for row in rows for v in row if v is not None]


def value_in(value: str, answer: str) -> bool:
    """A gold value in an answer: text case-insensitively; a number as written or rounded."""
    text = answer.lower().replace(",", "")
    try:
        number = float(value)
    except ValueError:
        return value.lower() in answer.lower()
    numbers = [float(m) for m in re.findall(r"-?\d+(?:\.\d+)?", text)]
    return any(abs(n - number) <= max(0.01, abs(number) * 0.005) for n in numbers)


def setup(data_dir: Path, as_before: bool) -> tuple[dict[str, str], float]:
    env = {**os.environ, "SWITCHBOARD_DATA_DIR": str(data_dir), "SWITCHBOARD_CACHE_TTL_S": "0",
           "SWITCHBOARD_RECORD_MODE": "off"}
    for key in ("SWITCHBOARD_DATABASE_URL", "SWITCHBOARD_HELPCENTER_DIR", "SWITCHBOARD_COLLECTION",
                "SWITCHBOARD_ROUTES_FILE", "SWITCHBOARD_PROFILE_FILE", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(key, None)
    started = time.monotonic()
    if as_before:
        env["SWITCHBOARD_DATABASE_URL"] = f"sqlite:///{DB}"
        cmd = [sys.executable, "-m", "switchboard.cli", "ingest", str(KENNEL / "docs")]
    else:
        cmd = [sys.executable, "-m", "switchboard.cli", "init", "--database", f"sqlite:///{DB}",
               "--docs", str(KENNEL / "docs"), "--name", NAME, "--kind", "a dog boarding kennel",
               "--description", "a dog boarding kennel with grooming and vet care", "--yes"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    took = time.monotonic() - started
    print(out.stdout.strip())
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd[2:4])} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    os.environ.update({k: v for k, v in env.items() if k.startswith("SWITCHBOARD_")})
    return env, took


async def route_sets(sets: dict[str, list[dict[str, Any]]], use_llm: bool) -> dict[str, Any]:
    from switchboard.services import Services
    from switchboard.settings import Settings

    triage = Services(Settings()).triage
    triage.use_llm = use_llm
    out: dict[str, Any] = {}
    for name, items in sets.items():
        hits, llm, misses = 0, 0, []
        for item in items:
            decision = await triage.decide(item["q"], has_image=False)
            got = sorted({s.agent for s in decision.subtasks})
            llm += decision.llm_calls
            if got == sorted(item["routes"]):
                hits += 1
            else:
                misses.append({"q": item["q"], "expected": item["routes"], "got": got})
        out[name] = {"accuracy": hits / len(items), "n": len(items), "llm_calls": llm, "misses": misses}
    return out


async def answers(sets: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    from switchboard.api import Switchboard
    from switchboard.settings import Settings

    out: dict[str, Any] = {}
    async with Switchboard.open(Settings()) as board:
        for name, items in sets.items():
            rows = []
            for i, item in enumerate(items):
                started = time.monotonic()
                turn = await board.ask(item["q"], thread_id=f"kennel-{name}-{i}")
                want = [*(gold_values(item["sql"]) if item.get("sql") else []), *item.get("expect", [])]
                missing = [w for w in want if not value_in(w, turn.answer)]
                ok = not turn.error and not missing
                kind = "+".join(item["routes"])
                rows.append({"q": item["q"], "kind": kind, "ok": ok, "missing": missing,
                             "agents": [s.agent for s in turn.subtasks], "answer": turn.answer[:400],
                             "seconds": round(time.monotonic() - started, 2)})
                print(f"  {name} {i + 1:2d}/{len(items)} {'ok  ' if ok else 'MISS'} {kind:9s} {item['q'][:70]!r}"
                      + (f" missing {missing}" if missing else ""), flush=True)
            by_kind: dict[str, list[bool]] = {}
            for r in rows:
                by_kind.setdefault(r["kind"], []).append(r["ok"])
            out[name] = {"accuracy": sum(r["ok"] for r in rows) / len(rows), "n": len(rows),
                         "by_kind": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_kind.items())}, "rows": rows}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--answers", action="store_true", help="also answer every question on the local model")
    ap.add_argument("--as-before", action="store_true", help="set up without init (DATABASE_URL + ingest only)")
    ap.add_argument("--sets", default="heldout,tune")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sets = questions(args.sets.split(","))
    report: dict[str, Any] = {"mode": "before (no init)" if args.as_before else "switchboard init"}
    with tempfile.TemporaryDirectory(prefix="sb-kennel-") as tmp:
        _, took = setup(Path(tmp) / "data", args.as_before)
        report["setup_s"] = round(took, 1)
        print(f"\nsetup ({report['mode']}): {took:.1f} s")
        report["routing_no_llm"] = asyncio.run(route_sets(sets, use_llm=False))
        report["routing"] = asyncio.run(route_sets(sets, use_llm=True))
        for name in sets:
            r0, r1 = report["routing_no_llm"][name], report["routing"][name]
            print(f"route-set accuracy, {name} ({r1['n']}): {r1['accuracy']:.1%} with the LLM when unsure "
                  f"({r1['llm_calls']} LLM calls), {r0['accuracy']:.1%} classifier only")
            for m in r1["misses"]:
                print(f"    MISS {m['q']!r}: expected {m['expected']}, got {m['got']}")
        if args.answers:
            report["answers"] = asyncio.run(answers(sets))
            for name, a in report["answers"].items():
                print(f"answer accuracy, {name} ({a['n']}): {a['accuracy']:.1%}  by kind {a['by_kind']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
