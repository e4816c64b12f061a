"""A loopback cluster (``scripts/cluster.sh``) and a load of conversations through its balancer,
each answer checked against its own question. Used by ``bench/scale.py`` and the cluster test."""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.scale_parts.replica import ECHO, LATENCY_ENV, write_registry

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
    def pids(self) -> list[int]:
        return [int(p) for p in self.info.get("SWITCHBOARD_CLUSTER_PIDS", "").split()]

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
def question(conv: str, turn: int) -> tuple[str, list[str], int]:
    """What conversation ``conv`` asks at ``turn``: the text, fragments its answer must contain,
    and its number of parts. Conversations start at different places, so questions in flight differ."""
    kind = (turn + sum(map(ord, conv))) % 3
    token = f"{conv}-t{turn}"
    if kind == 0:
        return f"Tell me a joke about {token}", [ECHO, token], 1
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
    if the question never arrived, it is sent again."""
    out = []
    for i in range(first, first + turns):
        text, expect, parts = question(conversation, i)
        turn = Turn(conversation, i, text, expect, parts)
        started = time.perf_counter()
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
            if turn.status == 200 or turn.attempts >= 5:
                break
            await asyncio.sleep(0.5)  # the balancer takes a dead replica out within ~2 s
            try:
                stored = await last_question(http, conversation)
            except httpx.HTTPError:
                continue
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
