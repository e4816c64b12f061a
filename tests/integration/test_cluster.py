"""A real cluster on loopback (scripts/cluster.sh): PostgreSQL, a Chroma server, two `switchboard
serve` replicas and HAProxy, with fake models of fixed latency (bench/scale_parts/replica.py).

A replica is SIGKILLed under load, in the middle of a turn: no turn is lost or recorded twice, no ledger row is written
twice, and every answer belongs to its own conversation. Replicas racing for a small daily budget
spend at most one call past it. (Small versions of bench/scale.py's figures 2 and 3.)"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bench.scale_parts.load import Cluster, budget_race, fresh_database, kill_under_load

PG_URL = os.environ.get("SWITCHBOARD_PG_URL", "")
pytestmark = pytest.mark.skipif(not PG_URL, reason="SWITCHBOARD_PG_URL is not set: run `eval \"$(scripts/postgres.sh)\"`")


@pytest.fixture
def db_url() -> Iterator[str]:
    name = f"sb_cluster_{uuid.uuid4().hex[:8]}"
    url = fresh_database(PG_URL, name)
    yield url
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_replica_killed_under_load_loses_nothing(db_url: str, tmp_path: Path):
    with Cluster(2, tmp_path, db_url, latency_ms=150) as cluster:
        got = await kill_under_load(cluster, db_url, conversations=6, turns=8, kill_after_s=0.8)
    figures = json.dumps(got)  # a string: pytest shows it whole
    assert got["victim_cut"] and got["requests_failed_by_kill"] >= 1, figures  # the kill cut a turn mid-way
    assert got["lost_turns"] == 0 and got["duplicated_turns"] == 0, figures
    assert got["dup_turn_records"] == 0 and got["dup_ledger_rows"] == 0, figures
    assert got["crosstalk"] == 0 and got["wrong_answers"] == 0, figures


async def test_replicas_racing_for_a_daily_budget_overspend_at_most_one_call(db_url: str, tmp_path: Path):
    got = await budget_race(tmp_path, db_url, budget_usd=0.03, replicas=2, conversations=8, latency_ms=50)
    assert got["turns_refused_for_budget"] > 0, got  # the budget did bind
    assert got["spent_usd"] <= got["budget_usd"] + got["largest_call_usd"], got
