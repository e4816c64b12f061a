"""The ``switchboard`` command: init, ask, route, ingest, demo, serve."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from switchboard import audit_cli, init_cli
from switchboard.settings import Settings
from tools.models.values import POLICIES
from tools.observability.redaction import install_log_redaction

MAX_WORKERS = 32  # serve --workers
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
    from switchboard.api import ReviewPending, ThreadNotFound

    async with Switchboard.open(settings) as sb:
        try:
            if args.json:  # one JSON document at the end, as before
                turn = await sb.ask(args.question, thread_id=args.thread, image=args.image, policy=args.policy)
            else:
                turn = await _stream_answer(sb.stream(args.question, thread_id=args.thread, image=args.image,
                                                      policy=args.policy))
        except ReviewPending as exc:
            print(f"error: {exc}: switchboard resume {exc.thread_id} --approve|--reject|--edit SQL", file=sys.stderr)
            return 2
        except ThreadNotFound as exc:  # another principal's conversation (SWITCHBOARD_PRINCIPAL is who we are)
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return _show(turn, args, streamed=not args.json)


async def _recover(args: argparse.Namespace, settings: Settings) -> int:
    """Finish a turn whose process died part-way, from its checkpoint (Switchboard.recover)."""
    from switchboard.api import Switchboard

    async with Switchboard.open(settings) as sb:
        try:
            turn = await sb.recover(args.thread)
        except LookupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return _show(turn, args)


async def _stream_answer(events: Any) -> Any:
    """Print the answer as it is produced (switchboard/lifecycle.py TextStream); return the turn."""
    from graphs.support import SPECIALISTS
    from switchboard import lifecycle

    labels = {cls.name: cls.label for cls in SPECIALISTS}
    text, turn = lifecycle.TextStream(labels), None
    async for event in events:
        if isinstance(event, lifecycle.Notice):
            print(event.text, flush=True)
        elif isinstance(event, lifecycle.Answer) and event.earlier:  # a cut-off turn, finished first
            print(text.rest(event.turn.answer) + "\n", flush=True)
            text = lifecycle.TextStream(labels)
        elif isinstance(event, (lifecycle.Answer, lifecycle.Paused, lifecycle.Failed)):
            turn = event.turn
            if isinstance(event, lifecycle.Answer):
                print(text.rest(event.turn.answer), flush=True)
            elif text.sent:
                print(flush=True)
        elif delta := text.feed(event):
            print(delta, end="", flush=True)
    return turn


def _show(turn: Any, args: argparse.Namespace, streamed: bool = False) -> int:
    if args.json:
        _print_json(turn.as_json())
    elif not turn.error:
        _print_turn(turn, answer=not streamed)
    if turn.error:  # nothing could be answered (the local runtime failed its self-check, say)
        print(f"error: {turn.error}", file=sys.stderr)
        return 1
    return 0


def _print_turn(turn: Any, answer: bool = True) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console()
    if answer and not getattr(turn, "pending_review", None):  # a paused turn's reviews are listed below instead
        console.print(Markdown(turn.answer))
    for s in turn.subtasks:
        console.print(
            f"[dim]  {s.agent:<8} {s.model or '-':<26} in={s.tokens_in:<5} out={s.tokens_out:<4} "
            f"${s.cost_usd:.5f} {s.latency_ms} ms — {s.task}[/dim]"
        )
    console.print(f"[dim]  thread {turn.thread_id} · {turn.latency_ms} ms · ${turn.cost_usd:.5f}[/dim]")
    if getattr(turn, "pending_review", None):
        _print_reviews(turn.thread_id, turn.pending_review)


def _print_reviews(thread: str, pending: list[dict[str, Any]]) -> None:
    """What a paused turn waits for, and the commands that continue it (plain text: SQL is copied)."""
    print(f"\nThis turn is waiting for review ({len(pending)}):")
    for r in pending:
        print(f"- [{r.get('kind')}] review {r['id']}: {r.get('question', '')}")
        if r.get("sql"):
            print(f"    SQL: {r['sql']}")
        if r.get("kind") == "cost":
            print(f"    model {r.get('model')}: about ${r.get('estimate_usd', 0):.4f}, spent ${r.get('spent_usd', 0):.4f}, "
                  f"review limit ${r.get('limit_usd', 0):.2f}")
    only = "" if len(pending) == 1 else " --id REVIEW_ID"
    print(f"Continue with: switchboard resume {thread} --approve | switchboard resume {thread} --reject"
          + (f" | switchboard resume {thread}{only} --edit \"SQL\"" if any(r.get("sql") for r in pending) else ""))


async def _resume(args: argparse.Namespace, settings: Settings) -> int:
    """Continue a turn paused for human review with a decision (Switchboard.resume)."""
    from switchboard.api import NoPendingReview, ReviewError, ReviewForbidden, Switchboard, ThreadNotFound

    decision: dict[str, Any] = ({"action": "edit", "sql": args.edit} if args.edit is not None
                                else {"action": "approve" if args.approve else "reject"})
    async with Switchboard.open(settings) as sb:
        try:
            turn = await sb.resume(args.thread, decision, interrupt_id=args.id)
        except (NoPendingReview, ThreadNotFound, ReviewError, ReviewForbidden) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return _show(turn, args)


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
        for line in filter(None, [decision.refusal, decision.skipped_note]):  # the per-message caps
            print(line)
        print(f"LLM calls: {decision.llm_calls}")
    return 0


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    from knowledge.ingest import ingest, remove
    from switchboard.services import Services

    if args.reembed:
        return _reembed(settings)
    if not args.paths:
        print("switchboard ingest: give the files or folders to ingest (or --reembed)", file=sys.stderr)
        return 2
    store = Services(settings).kb
    paths = [Path(p) for p in args.paths]
    if args.remove:
        print(f"removed {remove(paths, store)} source(s)")
        return 0
    report = ingest(paths, store, progress=sys.stderr.isatty(), prune=args.prune)
    print(report.summary())
    return 0


def _reembed(settings: Settings) -> int:
    """Move the knowledge base to the configured embedding model, keeping every document."""
    from knowledge.store import KnowledgeStoreError, reembed_collection
    from tools.models.knowledge_embeddings import knowledge_embedder

    s = settings
    embedder = knowledge_embedder(s.knowledge_embeddings, s.model_cache_dir)
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        print(f"re-embedding {s.collection!r} with {s.knowledge_embeddings}: {done}/{total} chunks "
              f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)

    try:
        n, changed = reembed_collection(*s.chroma_location, s.collection, s.knowledge_embeddings, embedder,
                                        progress=progress)
    except KnowledgeStoreError as exc:
        print(f"switchboard ingest --reembed: {exc}", file=sys.stderr)
        return 1
    if not changed:
        print(f"{s.collection!r} already holds {s.knowledge_embeddings} vectors ({n} chunk(s)): nothing to do")
        return 0
    print(f"re-embedded {n} chunk(s) of {s.collection!r} with {s.knowledge_embeddings} "
          f"in {time.monotonic() - started:.1f} s")
    return 0


async def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from switchboard.api import Switchboard

    async with Switchboard.open(settings) as sb:
        if not args.json:
            print(_banner(sb.services))
        thread = args.thread
        for q in DEMO_QUESTIONS:
            if not args.json:
                print(f"\n> {q}", flush=True)
            turn = await sb.ask(q, thread_id=thread)
            if args.json:  # one JSON object per question (JSON lines), as `ask --json` prints
                _print_json({"question": q, **turn.as_json()})
            if turn.error:
                print(f"error: {turn.error}", file=sys.stderr)
                return 1
            if not args.json:
                _print_turn(turn)
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the HTTP API (OpenAI-compatible chat completions) until interrupted; SIGTERM drains:
    the listener closes at once and in-flight turns get ``--graceful-timeout`` seconds to finish."""
    import uvicorn

    from switchboard.server import INSECURE_ENV, MissingAPIKeys, ServerSettings, resolve_api_keys

    if not 1 <= args.workers <= MAX_WORKERS:
        print(f"error: --workers must be between 1 and {MAX_WORKERS}", file=sys.stderr)
        return 2
    try:  # refused here, before any worker starts
        resolve_api_keys(None, ServerSettings(), args.insecure_no_auth)
    except (MissingAPIKeys, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from knowledge.store import OtherModelsVectors
    from switchboard.services import Services

    services = Services(settings)
    try:  # the knowledge base holds another model's vectors: said once, before any worker starts
        services.check_knowledge_base()
    except OtherModelsVectors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ[INSECURE_ENV] = "1" if args.insecure_no_auth else "0"
    os.environ["SWITCHBOARD_LOG_LEVEL"] = "INFO" if args.verbose else "WARNING"
    if args.workers > 1 and not settings.chroma_url:
        # a Chroma folder is not safe for several writers: sync the help center once, here; the
        # workers then find nothing to write (run a Chroma server to ingest while serving)
        _ = services.kb
        print(f"help center: {services.kb_report}; {args.workers} workers share the Chroma folder "
              f"{settings.chroma_dir} read-only (set SWITCHBOARD_CHROMA_URL for a Chroma server)", file=sys.stderr)
    uvicorn.run("switchboard.server:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, timeout_graceful_shutdown=args.graceful_timeout,
                log_level="info" if args.verbose else "warning")
    return 0


def _train_router(args: argparse.Namespace) -> int:
    """Train the light/heavy tier router from outcome files and save it (see tools/routing/tier_router.py)."""
    from tools.routing.tier_router import TierRouterError
    from tools.routing.training import train_from_files

    try:
        router, counts = train_from_files(
            args.outcomes, weak_model=args.weak_model, strong_model=args.strong_model, C=args.C,
            drop_contaminated=not args.keep_contaminated,
        )
    except TierRouterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = router.save(args.out)
    m = router.meta
    print(f"trained on {m['n']} outcomes ({', '.join(f'{k}: {v}' for k, v in counts.items())}); C={router.C:g}; "
          f"light not enough on {m['heavy_needed_rate']:.1%}; held-out APGR {m['held_out_apgr']:.3f}")
    print("policy thresholds: " + ", ".join(f"{k}={v:.3f}" for k, v in router.policies.items()))
    print(f"wrote {path}")
    return 0


def _banner(services: Any) -> str:
    s = services.settings
    models = ", ".join(f"{m.name} ({m.tier})" for m in services.registry.available())
    return (f"Switchboard for {services.profile.name} — models: {models}\n"
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
    ask.add_argument("--policy", choices=POLICIES)
    ask.add_argument("--json", action="store_true", help="print one JSON object")

    route = sub.add_parser("route", help="print the triage decision without running specialists")
    route.add_argument("question", nargs="?")
    route.add_argument("--image", help="treat the turn as having an image attached")
    route.add_argument("--jsonl", help='JSON-lines file of {"text": ..., "image": bool}')
    route.add_argument("--json", action="store_true")
    route.add_argument("--no-llm", action="store_true", help="never ask the LLM, even when unsure")

    ing = sub.add_parser("ingest", help="add files to the knowledge base")
    ing.add_argument("paths", nargs="*")
    ing.add_argument("--prune", action="store_true", help="also remove sources whose files are gone")
    ing.add_argument("--remove", action="store_true", help="remove these sources instead")
    ing.add_argument("--reembed", action="store_true",
                     help="re-embed every chunk with the configured SWITCHBOARD_KNOWLEDGE_EMBEDDINGS (after a change)")

    demo = sub.add_parser("demo", help="answer the demo questions in the terminal")
    demo.add_argument("--json", action="store_true", help="one JSON object per question (JSON lines)")
    demo.add_argument("--thread", default="demo", help="conversation id (default: demo)")

    res = sub.add_parser("resume", help="continue a turn paused for human review (sensitive SQL, cost)")
    res.add_argument("thread", help="conversation id of the paused turn (as printed by ask)")
    decide = res.add_mutually_exclusive_group(required=True)
    decide.add_argument("--approve", action="store_true", help="run what was shown (the query, the heavy model)")
    decide.add_argument("--reject", action="store_true", help="decline: no query runs; a cost review uses the light tier")
    decide.add_argument("--edit", metavar="SQL", help="run this query instead (checked read-only like any query)")
    res.add_argument("--id", help="the review to decide when several are pending (default: all of them)")
    res.add_argument("--json", action="store_true", help="print one JSON object")

    rec = sub.add_parser("recover", help="finish a turn that stopped part-way (process killed) from its checkpoint")
    rec.add_argument("thread", help="conversation id of the interrupted turn")
    rec.add_argument("--json", action="store_true", help="print one JSON object")

    serve = sub.add_parser("serve", help="serve the HTTP API (OpenAI-compatible /v1/chat/completions)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="run without API keys (SWITCHBOARD_API_KEYS unset): anyone who can reach the port "
                            "can use it and read every conversation")
    serve.add_argument("--workers", type=int, default=1,
                       help=f"worker processes sharing the port (1-{MAX_WORKERS}; default 1): each is a replica "
                            "over the same stores, one turn per conversation at a time across them")
    serve.add_argument("--graceful-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="on SIGTERM, how long in-flight turns may run before they are cancelled (default 30)")
    trr = sub.add_parser("train-router", help="train the light/heavy tier router from stored outcomes of both tiers")
    trr.add_argument("outcomes", nargs="+", metavar="OUTCOMES",
                     help="RouteLLM CSVs (prompt + True/False per model), MT-Bench judgements.jsonl, or JSONL of "
                          '{"text", "weak_score", "strong_score"}; a folder means its .csv/.jsonl files')
    trr.add_argument("--out", required=True, help="where to write the router (JSON)")
    trr.add_argument("--weak-model", default="mistralai/Mixtral-8x7B-Instruct-v0.1", help="light model's column/name")
    trr.add_argument("--strong-model", default="gpt-4-1106-preview", help="heavy model's column/name")
    trr.add_argument("--C", type=float, default=None, help="regularisation (default: chosen by held-out APGR)")
    trr.add_argument("--keep-contaminated", action="store_true", help="do not drop contaminated_prompts.jsonl entries")
    audit_cli.add_parsers(sub)
    init_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    install_log_redaction()  # no e-mail, phone, card, IBAN or key reaches a log (uvicorn's included)
    settings = Settings()
    try:
        if args.command == "ask":
            return asyncio.run(_ask(args, settings))
        if args.command == "resume":
            return asyncio.run(_resume(args, settings))
        if args.command == "route":
            return asyncio.run(_route(args, settings))
        if args.command == "ingest":
            return _ingest(args, settings)
        if args.command == "recover":
            return asyncio.run(_recover(args, settings))
        if args.command == "demo":
            return asyncio.run(_demo(args, settings))
        if args.command == "serve":
            return _serve(args, settings)
        if args.command == "train-router":
            return _train_router(args)
        if args.command == "init":
            return init_cli.run(args, settings)
        if args.command in ("audit", "compare"):
            return audit_cli.run(args, settings)
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
