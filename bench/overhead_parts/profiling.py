"""``--profile``: a cProfile of sequential turns (zero-latency fake, SQLite checkpointer)."""

from __future__ import annotations

import cProfile
import io
import pstats
from pathlib import Path

from bench.overhead_parts.stack import BENCH_MODEL, MIX, ROOT, ask, bench_settings, switchboard_fake
from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.persistence import open_checkpointer
from switchboard.services import Services


async def profile_turns(services: Services, data_dir: Path, turns: int) -> str:
    fake = switchboard_fake()
    services.registry.use_chat_model(BENCH_MODEL, fake)
    settings = bench_settings(data_dir, checkpoint_url=f"sqlite:///{data_dir / 'profile.sqlite'}")
    async with open_checkpointer(settings) as saver:
        sb = Switchboard(build_support_graph(services=services, checkpointer=saver), services)
        for i, r in enumerate(MIX):
            await ask(sb, r, f"prof-warm-{i % 3}")
        prof = cProfile.Profile()
        prof.enable()
        for i in range(turns):
            await ask(sb, MIX[i % len(MIX)], f"prof-{i % 5}")
        prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("cumulative").print_stats(30)
    project = "|".join(f"{ROOT}/{d}/" for d in ("agents", "graphs", "tools", "knowledge", "switchboard"))
    stats.sort_stats("cumulative").print_stats(project, 30)
    stats.sort_stats("tottime").print_stats(25)
    return buf.getvalue()


