"""A loopback cluster (``scripts/cluster.sh``) and a load of conversations through its balancer,
each answer checked against its own question. Used by ``bench/scale.py`` and the cluster test."""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import subprocess
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.scale_parts.replica import ECHO, LATENCY_ENV, SLOW, write_registry

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "scripts" / "cluster.sh"
POSTGRES = ROOT / "scripts" / "postgres.sh"


def exports(text: str) -> dict[str, str]:
    """``export NAME=value`` lines (shell-quoted values) -> {NAME: value}."""
    out = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            name, _, value = line[len("export "):].partition("=")
            out[name] = shlex.split(value)[0] if value else ""
    return out


def start_postgres() -> tuple[dict[str, str], bool]:
    """``scripts/postgres.sh``'s exports, and whether this call started the server."""
    done = subprocess.run(["bash", str(POSTGRES)], capture_output=True, text=True, check=True, timeout=600)
    return exports(done.stdout), "# started: yes" in done.stdout


def fresh_database(admin_url: str, name: str) -> str:
    """Drop and create database ``name`` on the server of ``admin_url``; its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        con.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


@dataclass
class Cluster:
    """``scripts/cluster.sh up N`` with a fake model of fixed latency in every replica."""

    replicas: int
    run_dir: Path
    checkpoint_url: str
    latency_ms: float = 200.0
    extra_env: Mapping[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)

    def __enter__(self) -> Cluster:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(24)
        self.env = {
            **os.environ,
            "SWITCHBOARD_CLUSTER_DIR": str(self.run_dir / "cluster"),
            "SWITCHBOARD_CHECKPOINT_URL": self.checkpoint_url,
            "SWITCHBOARD_API_KEYS": f"loadtest={key}",
            "SWITCHBOARD_MODELS_FILE": str(write_registry(self.run_dir / "models.yaml")),
            "SWITCHBOARD_SETUP_HOOK": "bench.scale_parts.replica:install",
            LATENCY_ENV: str(self.latency_ms),
            "SWITCHBOARD_CACHE_TTL_S": "0",
            "SWITCHBOARD_ROUTING_POLICY": "balanced",
            "SWITCHBOARD_RECORD_MODE": "off",
            # ports of their own: a developer's cluster on the defaults (28080, 28101...) stays up
            "SWITCHBOARD_LB_PORT": "28180",
            "SWITCHBOARD_REPLICA_BASE_PORT": "28201",
            **self.extra_env,
        }
        started = time.monotonic()
        done = subprocess.run(["bash", str(CLUSTER), "up", str(self.replicas)], env=self.env, capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            self.__exit__(None, None, None)
            raise RuntimeError(f"cluster.sh up failed ({done.returncode}):\n{done.stderr[-3000:]}")
        self.info = exports(done.stdout)
        self.info["api_key"] = key
        self.info["up_s"] = f"{time.monotonic() - started:.1f}"
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["bash", str(CLUSTER), "down"], env=self.env, capture_output=True, text=True, timeout=300)

    @property
    def url(self) -> str:
        return self.info["SWITCHBOARD_CLUSTER_URL"]

    @property
    def replica_urls(self) -> list[str]:
        return self.info.get("SWITCHBOARD_CLUSTER_REPLICAS", "").split()

    @property
    def pids(self) -> list[int]:
        return [int(p) for p in self.info.get("SWITCHBOARD_CLUSTER_PIDS", "").split()]

    def sessions(self, replica: int) -> int:
        """Requests HAProxy has in flight on ``replica`` now (``scur`` of server r<replica>, read
        from its stats socket), or -1 if the socket does not answer."""
        import socket

        sock = Path(self.env["SWITCHBOARD_CLUSTER_DIR"]) / "haproxy" / "haproxy.sock"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(str(sock))
                s.sendall(b"show stat\n")
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
        except OSError:
            return -1
        lines = out.decode().splitlines()
        if not lines:
            return -1
        head = lines[0].removeprefix("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(head, line.split(","), strict=False))
            if row.get("pxname") == "replicas" and row.get("svname") == f"r{replica}":
                return int(row.get("scur") or 0)
        return -1

    def kill(self, replica: int) -> None:
        subprocess.run(["bash", str(CLUSTER), "kill", str(replica)], env=self.env, check=True,
                       capture_output=True, timeout=60)

    def cpu_seconds(self) -> float:
        """User + system CPU of the replicas (their process trees: workers included)."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in self.pids:
            for stat in _tree_stats(pid):
                fields = stat.rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        return total


def _tree_stats(pid: int) -> list[str]:
    out = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            out.append(Path(f"/proc/{p}/stat").read_text())
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return out


# --- the conversations ------------------------------------------------------------------------------
def echoed(conv: str, turn: int, tail: str = "") -> tuple[str, list[str], int]:
    """A one-part question the generalist echoes, with a token naming its conversation and turn:
    the text, fragments its answer must contain (the echo, the token), and its number of parts."""
    token = f"{conv}-t{turn}"
    return f"Tell me a joke about {token}{tail}", [ECHO, token], 1


def question(conv: str, turn: int) -> tuple[str, list[str], int]:
    """What conversation ``conv`` asks at ``turn``: the text, fragments its answer must contain,
    and its number of parts. Conversations start at different places, so questions in flight differ."""
    kind = (turn + sum(map(ord, conv))) % 3
    if kind == 0:
        return echoed(conv, turn)
    if kind == 1:
        return "How many customers are from Brazil?", ["customers are from Brazil"], 1
    return "How many customers are from Brazil? What's your refund policy?", \
        ["customers are from Brazil", "help center says"], 2


@dataclass
class Turn:
    conversation: str
    index: int
    question: str
    expect: list[str]
    parts: int
    latency_s: float = 0.0
    status: int = 0
    answer: str = ""
    llm_calls: int = 0
    error: str = ""
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.status == 200 and all(f in self.answer for f in self.expect)

    def crosstalk(self, tokens: set[str]) -> bool:
        """The answer names another conversation's token."""
        mine = f"{self.conversation}-t"
        return any(t in self.answer for t in tokens if not t.startswith(mine))


def client(url: str, key: str, conversations: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120,
                             limits=httpx.Limits(max_connections=conversations + 8,
                                                 max_keepalive_connections=conversations + 8))


async def ask(http: httpx.AsyncClient, conversation: str, text: str) -> httpx.Response:
    return await http.post("/v1/chat/completions", headers={"X-Conversation-Id": conversation},
                           json={"model": "switchboard", "messages": [{"role": "user", "content": text}]})


async def last_question(http: httpx.AsyncClient, conversation: str) -> str | None:
    """The conversation's last user message as the cluster stored it (None: no conversation yet)."""
    r = await http.get(f"/v1/threads/{conversation}")
    if r.status_code == 404:
        return None
    r.raise_for_status()
    users = [m["content"] for m in r.json().get("messages", []) if m["role"] == "user"]
    return users[-1] if users else None


async def converse(http: httpx.AsyncClient, conversation: str, turns: int, first: int = 0) -> list[Turn]:
    """A conversation's turns, one after the other. A turn whose request failed (a replica died
    under it) is not asked again if the cluster stored the question: the next message finishes it;
    if the question never arrived, it is sent again. At most 5 sends and 10 looks per turn."""
    out = []
    for i in range(first, first + turns):
        text, expect, parts = question(conversation, i)
        turn = Turn(conversation, i, text, expect, parts)
        started = time.perf_counter()
        looks = 0
        while True:
            try:
                r = await ask(http, conversation, text)
                turn.status = r.status_code
                body = r.json()
                if r.status_code == 200:
                    turn.answer = body["choices"][0]["message"]["content"]
                    turn.llm_calls = body["switchboard"]["llm_calls"]
                else:
                    turn.error = body.get("error", {}).get("code") or str(r.status_code)
            except (httpx.HTTPError, ValueError) as exc:
                turn.status, turn.error = 0, type(exc).__name__
            if turn.status == 200 or turn.attempts >= 5 or looks >= 10:
                break
            await asyncio.sleep(0.5)  # the balancer takes a dead replica out within ~2 s
            looks += 1
            try:
                stored = await last_question(http, conversation)
            except httpx.HTTPError:
                continue  # not known whether it arrived: ask again (a busy conversation answers 409)
            if stored == text:  # it reached the graph: the next message finishes it
                turn.status, turn.answer = 0, ""
                break
            turn.attempts += 1
        turn.latency_s = time.perf_counter() - started
        out.append(turn)
    return out


async def load(url: str, key: str, conversations: int, turns: int, tag: str) -> tuple[list[Turn], float]:
    """``conversations`` at once, ``turns`` each; all turns and the wall time."""
    async with client(url, key, conversations) as http:
        started = time.perf_counter()
        runs = await asyncio.gather(*(converse(http, f"{tag}-c{c}", turns) for c in range(conversations)))
        wall = time.perf_counter() - started
    return [t for run in runs for t in run], wall


async def history(url: str, key: str, conversation: str) -> list[dict[str, Any]]:
    async with client(url, key, 1) as http:
        r = await http.get(f"/v1/threads/{conversation}", params={"limit": 500})
        r.raise_for_status()
        return list(r.json()["messages"])


# --- failure and money ---------------------------------------------------------------------------
def audit_counts(db_url: str, threads: list[str]) -> dict[str, Any]:
    """From PostgreSQL: per conversation the recorded turns' questions, and duplicates."""
    import psycopg

    with psycopg.connect(db_url) as con:
        questions: dict[str, list[str]] = {}
        for thread, q in con.execute("SELECT thread_id, question FROM audit_turns WHERE thread_id = ANY(%s) "
                                     "ORDER BY thread_id, turn_index", (threads,)):
            questions.setdefault(thread, []).append(q)
        dup_turns = con.execute("SELECT count(*) FROM (SELECT thread_id, turn_index FROM audit_turns "
                                "GROUP BY 1, 2 HAVING count(*) > 1) d").fetchone()
        dup_ledger = con.execute("SELECT count(*) FROM (SELECT call_id FROM ledger_calls GROUP BY 1 "
                                 "HAVING count(*) > 1) d").fetchone()
        ledger = con.execute("SELECT count(*) FROM ledger_calls WHERE thread_id = ANY(%s)", (threads,)).fetchone()
        audited = con.execute("SELECT count(*) FROM audit_calls WHERE thread_id = ANY(%s) AND role <> 'shadow'",
                              (threads,)).fetchone()
    return {"questions": questions, "dup_turn_records": dup_turns[0] if dup_turns else 0,
            "dup_ledger_rows": dup_ledger[0] if dup_ledger else 0, "ledger_rows": ledger[0] if ledger else 0,
            "audited_calls": audited[0] if audited else 0}


VICTIM = "kill-victim"


async def kill_under_load(cluster: Cluster, db_url: str, conversations: int, turns: int,
                          kill_after_s: float) -> dict[str, Any]:
    """Conversations on a 2-replica cluster; replica 1 is SIGKILLed ``kill_after_s`` in, in the
    middle of a turn: one more conversation (:data:`VICTIM`) sends a slow question straight to
    replica 1, and the kill waits until that turn is in its graph (its question stored). The load
    through the balancer may lose turns in flight there too. Then one more message per
    conversation (its last turn may be the cut-off one) and the reckoning."""
    names = [f"kill-c{c}" for c in range(conversations)] + [VICTIM]
    key = cluster.info["api_key"]
    async with client(cluster.url, key, conversations + 1) as http, \
            client(cluster.replica_urls[0], key, 1) as replica1:
        tasks = [asyncio.create_task(converse(http, name, turns)) for name in names[:-1]]
        text, expect, parts = echoed(VICTIM, 0, f" {SLOW}")
        victim = Turn(VICTIM, 0, text, expect, parts)
        cut = asyncio.create_task(ask(replica1, VICTIM, text))
        await asyncio.sleep(kill_after_s)
        deadline = time.monotonic() + 15.0
        while not cut.done() and time.monotonic() < deadline:
            try:
                if await last_question(http, VICTIM) == text:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
        in_flight = cluster.sessions(1)  # the balancer's requests on replica 1 (not the victim's)
        killed_at = time.perf_counter()
        cluster.kill(1)
        try:
            victim.status = (await cut).status_code
        except httpx.HTTPError as exc:
            victim.status, victim.error = 0, type(exc).__name__
        runs = [*await asyncio.gather(*tasks), [victim]]
        finals = await asyncio.gather(*(converse(http, name, 1, first=len(run)) for name, run in zip(names, runs,
                                                                                                    strict=True)))
        after = time.perf_counter() - killed_at
    sent = [t for run in runs for t in run] + [t for run in finals for t in run]
    counts = audit_counts(db_url, names)
    lost = duplicated = 0
    for name in names:
        asked = Counter(t.question for t in sent if t.conversation == name)
        recorded = Counter(counts["questions"].get(name, []))
        lost += sum(1 for q, n in asked.items() if recorded[q] < n)
        duplicated += sum(max(0, recorded[q] - n) for q, n in asked.items())
    tokens = {tok for t in sent for tok in t.expect if "-t" in tok}
    return {
        "conversations": len(names), "turns_asked": len(sent),
        "requests_failed_by_kill": sum(1 for t in sent if t.status != 200),
        "victim_cut": victim.status != 200,
        "balancer_requests_in_flight_at_kill": in_flight,
        "resent_never_stored": sum(t.attempts - 1 for t in sent),
        "lost_turns": lost, "duplicated_turns": duplicated,
        "dup_turn_records": counts["dup_turn_records"], "dup_ledger_rows": counts["dup_ledger_rows"],
        "ledger_rows": counts["ledger_rows"], "audited_calls": counts["audited_calls"],
        "crosstalk": sum(t.crosstalk(tokens) for t in sent),
        "wrong_answers": sum(1 for t in sent if t.status == 200 and not t.ok),
        "seconds_from_kill_to_last_answer": round(after, 1),
    }


async def budget_race(run: Path, db_url: str, budget_usd: float, replicas: int, conversations: int,
                      latency_ms: float) -> dict[str, Any]:
    """Replicas serving conversations against one small daily budget, with a priced fake model."""
    import psycopg

    registry = write_registry(run / "priced-models.yaml", price_per_million=10.0)  # about half a cent a call
    env = {"SWITCHBOARD_MODELS_FILE": str(registry), "SWITCHBOARD_BUDGET_DAY_USD": str(budget_usd)}
    with Cluster(replicas, run, db_url, latency_ms, extra_env=env) as cluster:
        turns, wall = await load(cluster.url, cluster.info["api_key"], conversations, 3, "budget")
    with psycopg.connect(db_url) as con:
        row = con.execute("SELECT COALESCE(SUM(cost_usd), 0), count(*), COALESCE(MAX(cost_usd), 0) "
                          "FROM ledger_calls").fetchone()
    spent, calls, biggest = row if row else (0.0, 0, 0.0)
    return {"replicas": replicas, "conversations": conversations, "turns": len(turns), "budget_usd": budget_usd,
            "spent_usd": round(spent, 6), "calls": calls, "largest_call_usd": round(biggest, 6),
            "overspend_usd": round(max(0.0, spent - budget_usd), 6),
            "turns_refused_for_budget": sum(1 for t in turns if "budget" in t.answer), "wall_s": round(wall, 1)}
