"""``switchboard init``: from the demo to your own business, with no file of the project edited.

    switchboard init --database URL --docs FOLDER --name NAME [--kind ...] [--description ...] [--yes]

Checks the database and the docs folder first (nothing is written when either is unusable), then
writes under the data dir: ``profile.yaml`` (who the business is: every prompt reads it),
``settings.yaml`` (the database, the docs folder and a knowledge-base collection of its own) and
``routes.yaml`` (triage's routes, from ``switchboard/config/routes.generic.yaml``: add your own
examples there). Then it ingests the docs, builds triage's classifier from the schema and the
docs (``tools/routing/generate.py``) and prints a routing self-check. Asks for what is missing when
run in a terminal; ``--yes`` never asks (scripts), and uses defaults where it can.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from switchboard.settings import REPO_ROOT, Settings

GENERIC_ROUTES = REPO_ROOT / "switchboard" / "config" / "routes.generic.yaml"
DOC_SUFFIXES = {".md", ".markdown", ".txt", ".html", ".htm", ".pdf"}
MAX_DOCS = 5_000


class InitError(Exception):
    """What is wrong with the inputs, said so the user can fix it; nothing was written."""


def add_parser(sub: Any) -> None:
    init = sub.add_parser("init", help="set Switchboard up for your own database and help center")
    init.add_argument("--database", metavar="URL", help="your database: sqlite:///path.db or postgresql://...")
    init.add_argument("--docs", metavar="FOLDER", help="your help center: a folder of Markdown, text, HTML or PDF")
    init.add_argument("--name", help="the business's name, as answers should say it")
    init.add_argument("--kind", help='what it is, in a few words: "a dog boarding kennel"')
    init.add_argument("--description", help="one line about it (default: the kind)")
    init.add_argument("--noun", help='the word it calls itself: "store", "kennel", "clinic" (default: the kind\'s last word)')
    init.add_argument("--tone", default=None, help='how answers sound (default: "briefly and politely")')
    init.add_argument("--yes", action="store_true", help="never ask: use the defaults for what is not given")


def _ask(prompt: str, default: str | None, interactive: bool) -> str:
    if not interactive:
        return default or ""
    shown = f" [{default}]" if default else ""
    answer = input(f"{prompt}{shown}: ").strip()
    return answer or (default or "")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "business"


def _check_database(url: str) -> list[str]:
    """The database's tables; it is closed again (Switchboard opens its own)."""
    from tools.sql.database import ReadOnlyDatabase

    try:
        db = ReadOnlyDatabase.from_url(url)
        try:
            tables = db.table_names()
        finally:
            db.close()
    except Exception as exc:  # noqa: BLE001 - any driver error: say what it was
        raise InitError(f"cannot open the database {url!r}: {exc}") from exc
    if not tables:
        raise InitError(f"the database {url!r} has no tables to answer questions from")
    return tables


def _check_docs(folder: Path) -> int:
    if not folder.is_dir():
        raise InitError(f"the docs folder {folder} does not exist (or is not a folder)")
    count = 0
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix.lower() in DOC_SUFFIXES:
            count += 1
            if count > MAX_DOCS:
                raise InitError(f"{folder} holds over {MAX_DOCS:,} documents; ingest it in parts with `switchboard ingest`")
    if not count:
        raise InitError(f"{folder} holds no Markdown, text, HTML or PDF file to answer from")
    return count


def _database_phrase(tables: list[str]) -> str:
    """What the database holds, in words: "dogs, owners, breeds, ..." from its table names."""
    from tools.routing.generate import plural, singular, words

    phrases = []
    for name in tables[:12]:
        ws = words(name)
        if ws:
            phrases.append(" ".join([*ws[:-1], plural(singular(ws[-1]))]).lower())
    return ", ".join(phrases)[:250]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return _run(args, settings)
    except InitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from agents.profile import BusinessProfile, ProfileError

    interactive = not args.yes and sys.stdin.isatty()
    database = args.database or _ask("Your database URL (sqlite:///path.db or postgresql://...)", None, interactive)
    docs = args.docs or _ask("Your help center folder", None, interactive)
    missing = [flag for flag, value in (("--database", database), ("--docs", docs)) if not value]
    if missing:
        raise InitError(f"say {' and '.join(missing)} (or run it in a terminal to be asked)")
    started = time.monotonic()
    tables = _check_database(database)
    folder = Path(docs).expanduser().resolve()
    n_docs = _check_docs(folder)
    print(f"database: {len(tables)} table(s): {', '.join(tables[:12])}{' ...' if len(tables) > 12 else ''}")
    print(f"docs: {n_docs} file(s) in {folder}")

    name = args.name or _ask("The business's name", None, interactive)
    if not name:
        raise InitError("say --name (the business's name, as answers should say it)")
    kind = args.kind or _ask("What it is, in a few words", "a business", interactive)
    description = args.description or _ask("One line about it", kind, interactive)
    noun = args.noun or (kind.split()[-1] if kind.split() else "business")
    held = _database_phrase(tables)
    first_held = held.split(", ")[0] if held else "records"
    try:
        profile = BusinessProfile(name=name, kind=kind, description=description, noun=noun, database=held,
                                  topics=f"your {first_held}, data or {noun} policies",
                                  tone=args.tone or "briefly and politely")
    except ProfileError as exc:
        raise InitError(str(exc)) from exc

    data_dir = settings.data_dir
    routes_file = data_dir / "routes.yaml"
    chosen = {"database_url": database, "helpcenter_dir": str(folder), "collection": f"kb-{_slug(name)}",
              "routes_file": str(routes_file)}
    data_dir.mkdir(parents=True, exist_ok=True)
    _write(data_dir / "profile.yaml", "# Written by `switchboard init`: who the business is (agents/profile.py).\n"
           + yaml.safe_dump(profile.to_dict(), sort_keys=False, allow_unicode=True))
    if not routes_file.exists():  # your own examples stay yours: init never overwrites them
        shutil.copyfile(GENERIC_ROUTES, routes_file)
    _write(data_dir / "settings.yaml", "# Written by `switchboard init`; SWITCHBOARD_* variables override it.\n"
           + yaml.safe_dump(chosen, sort_keys=False, allow_unicode=True))
    print(f"wrote {data_dir / 'profile.yaml'}, {data_dir / 'settings.yaml'} and {routes_file}")
    import os

    if overridden := [f"SWITCHBOARD_{k.upper()}" for k in chosen if os.environ.get(f"SWITCHBOARD_{k.upper()}")]:
        print(f"note: {', '.join(overridden)} set in the environment override{'s' if len(overridden) == 1 else ''} "
              "what init wrote; unset it to use your business", file=sys.stderr)

    from switchboard.services import Services

    services = Services(Settings(data_dir=data_dir))  # what the next start will read
    services.kb  # noqa: B018 - opening it ingests the docs folder into the business's own collection
    print(f"knowledge base: {services.kb_report}")
    built = time.monotonic()
    services.triage  # noqa: B018 - trains (or loads) the classifier, timed here
    counts = services.route_training.counts()
    print(f"triage: trained on {len(services.route_training)} examples ({counts.get('routes', 0)} from "
          f"{chosen['routes_file']}, {counts.get('schema', 0)} from the schema, {counts.get('knowledge', 0)} from "
          f"the docs) in {time.monotonic() - built:.1f} s")
    from tools.routing.generate import cached_vectors, self_check

    print("\nrouting self-check (cross-validated on the examples):")
    ts, embedder = services.route_training, services.embedder  # the embeddings triage just trained on
    print(self_check(ts, embedder, vectors=cached_vectors(ts, services.settings.triage_cache_dir, embedder)).render())
    print(f"\ndone in {time.monotonic() - started:.1f} s. Try it:\n"
          f"  switchboard ask \"How many {first_held} are there?\"\n"
          f"  chainlit run app.py")
    return 0
