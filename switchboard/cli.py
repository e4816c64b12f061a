"""The ``switchboard`` command: ask, route, ingest, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from switchboard.settings import Settings

DEMO_QUESTIONS = [
    "How many customers are from Brazil?",
    "What's your refund policy?",
    "How many customers are from Germany, and what are your support hours?",
]


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False))


async def _ask(args: argparse.Namespace, settings: Settings) -> int:
    from switchboard.api import Switchboard

    if args.image and not Path(args.image).exists():
        print(f"error: image file not found: {args.image}", file=sys.stderr)
        return 2
    async with Switchboard.open(settings) as sb:
        turn = await sb.ask(args.question, thread_id=args.thread, image=args.image, policy=args.policy)
    if args.json:
        _print_json(turn.as_json())
    else:
        _print_turn(turn)
    return 0


def _print_turn(turn: Any) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console()
    console.print(Markdown(turn.answer))
    for s in turn.subtasks:
        console.print(
            f"[dim]  {s.agent:<8} {s.model or '-':<26} in={s.tokens_in:<5} out={s.tokens_out:<4} "
            f"${s.cost_usd:.5f} {s.latency_ms} ms — {s.task}[/dim]"
        )
    console.print(f"[dim]  thread {turn.thread_id} · {turn.latency_ms} ms · ${turn.cost_usd:.5f}[/dim]")


async def _route(args: argparse.Namespace, settings: Settings) -> int:
    from switchboard.services import Services

    services = Services(settings)
    triage = services.triage
    if args.no_llm:
        triage.use_llm = False
    if args.jsonl:
        path = Path(args.jsonl)
        if not path.is_file():
            print(f"error: no such file: {path}", file=sys.stderr)
            return 2
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                text = str(item["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                _print_json({"line": n, "error": f"bad line: {exc}"})
                continue
            decision = await triage.decide(text, has_image=bool(item.get("image")))
            _print_json({"line": n, "text": text, **decision.as_log()})
        return 0
    if not args.question:
        print("error: give a QUESTION or --jsonl FILE", file=sys.stderr)
        return 2
    decision = await triage.decide(args.question, has_image=bool(args.image))
    if args.json:
        _print_json({"text": args.question, **decision.as_log()})
    else:
        for s in decision.subtasks:
            top = sorted(s.scores.items(), key=lambda kv: -kv[1])[:3]
            print(f"{s.id} -> {s.agent:<8} {s.task!r}\n     {s.reason}; top scores: "
                  + ", ".join(f"{k}={v:.2f}" for k, v in top))
        print(f"LLM calls: {decision.llm_calls}")
    return 0


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    from knowledge.ingest import ingest, remove
    from switchboard.services import Services

    store = Services(settings).kb
    paths = [Path(p) for p in args.paths]
    if args.remove:
        print(f"removed {remove(paths, store)} source(s)")
        return 0
    report = ingest(paths, store, progress=sys.stderr.isatty(), prune=args.prune)
    print(report.summary())
    return 0


async def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from switchboard.api import Switchboard

    async with Switchboard.open(settings) as sb:
        print(_banner(sb.services))
        thread = "demo"
        for q in DEMO_QUESTIONS:
            print(f"\n> {q}")
            turn = await sb.ask(q, thread_id=thread)
            _print_turn(turn)
    return 0


def _banner(services: Any) -> str:
    s = services.settings
    models = ", ".join(f"{m.name} ({m.tier})" for m in services.registry.available())
    return (f"Switchboard — models: {models}\n"
            f"  database: {s.database_url}\n  knowledge base: {s.chroma_url or s.chroma_dir}\n"
            f"  conversations: {s.checkpoint_url or s.checkpoint_sqlite_path}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="switchboard", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log routing and model calls")
    sub = p.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer one user turn")
    ask.add_argument("question")
    ask.add_argument("--image", help="path of an attached image")
    ask.add_argument("--thread", help="conversation id; reuse it to continue a conversation")
    ask.add_argument("--policy", choices=["cost-saver", "balanced", "best-quality"])
    ask.add_argument("--json", action="store_true", help="print one JSON object")

    route = sub.add_parser("route", help="print the triage decision without running specialists")
    route.add_argument("question", nargs="?")
    route.add_argument("--image", help="treat the turn as having an image attached")
    route.add_argument("--jsonl", help='JSON-lines file of {"text": ..., "image": bool}')
    route.add_argument("--json", action="store_true")
    route.add_argument("--no-llm", action="store_true", help="never ask the LLM, even when unsure")

    ing = sub.add_parser("ingest", help="add files to the knowledge base")
    ing.add_argument("paths", nargs="+")
    ing.add_argument("--prune", action="store_true", help="also remove sources whose files are gone")
    ing.add_argument("--remove", action="store_true", help="remove these sources instead")

    sub.add_parser("demo", help="answer the demo questions in the terminal")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    settings = Settings()
    try:
        if args.command == "ask":
            return asyncio.run(_ask(args, settings))
        if args.command == "route":
            return asyncio.run(_route(args, settings))
        if args.command == "ingest":
            return _ingest(args, settings)
        if args.command == "demo":
            return asyncio.run(_demo(args, settings))
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
