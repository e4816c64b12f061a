"""Helpers the benchmarks share: deterministic sampling, plain-text tables, machine load."""

from __future__ import annotations

import functools
import json
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def stratified_sample(items: Sequence[T], key: Callable[[T], Hashable], n: int, seed: int = 0) -> list[T]:
    """``n`` items spread over the groups ``key`` defines, in proportion to their sizes.

    Deterministic for a given seed (so two runs measure the same questions) and every group with
    a share of at least one item is represented, unlike a plain random sample that can miss a
    small database entirely. Largest-remainder rounding makes the shares add up to exactly
    ``n``; the result keeps the input order.
    """
    if n >= len(items):
        return list(items)
    if n <= 0:
        raise ValueError("sample size must be positive")
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[key(item)].append(i)
    exact = {g: n * len(idx) / len(items) for g, idx in groups.items()}
    quota = {g: int(share) for g, share in exact.items()}
    by_remainder = sorted(groups, key=lambda g: (-(exact[g] - quota[g]), str(g)))
    for g in by_remainder[: n - sum(quota.values())]:
        quota[g] += 1
    rng = random.Random(seed)
    chosen: list[int] = []
    for g in sorted(groups, key=str):
        chosen += rng.sample(groups[g], quota[g])
    return [items[i] for i in sorted(chosen)]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def machine_load() -> str:
    """"load 1/5/15 min on N CPUs; CPU probe X ms", for reading latencies measured on a shared machine."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}/{fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs; CPU probe {cpu_probe_ms():.1f} ms"


def machine_cpu_seconds() -> float:
    """CPU time the whole machine spent busy, all cores summed (``/proc/stat``: every state but
    idle and iowait), so a load test can say what each turn cost everything that ran for it."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def cpu_probe_ms() -> float:
    """How fast this machine runs LangGraph right now, in ms: a bare three-node graph with an
    in-memory checkpointer, per run, best of 3 x 20 runs (allocation-heavy work like a turn's, which
    a tight arithmetic loop does not track). A shared VM's speed drifts by a third within minutes
    with an idle load average, so figures compare only at similar probes."""
    graph = _probe_graph()
    best = float("inf")
    for round_ in range(3):
        started = time.perf_counter()
        for i in range(20):
            graph.invoke({"n": 0}, {"configurable": {"thread_id": f"probe-{round_}-{i}"}})
        best = min(best, (time.perf_counter() - started) / 20)
    return best * 1000


@functools.cache
def _probe_graph() -> Any:
    from typing import TypedDict

    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        n: int

    builder = StateGraph(State)
    for name in ("a", "b", "c"):
        builder.add_node(name, lambda s: {"n": s["n"] + 1})
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", "c")
    builder.add_edge("c", END)
    return builder.compile(checkpointer=InMemorySaver())


def finish_run(figures: dict[str, Any], began: float, json_path: Path | None) -> None:
    """The end of a benchmark run: its wall time, printed and kept with the figures, which go to
    ``json_path`` when given."""
    figures["elapsed_s"] = round(time.monotonic() - began, 1)
    print(f"\nbench time {figures['elapsed_s']:.0f} s")
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2, default=str), encoding="utf-8")
        print(f"figures written to {json_path}")
