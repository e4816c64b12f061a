"""Bench-only (bench/streaming.py): first on ``PYTHONPATH`` of a door's process (``switchboard ask``,
``serve``, ``chainlit run``), it times ``Switchboard.stream`` inside that process, so the bench can
tell what the door adds to the very same turn: the door's time to first token minus the stream's.

Each ``stream()`` call appends one JSON line to ``BENCH_STREAM_CLOCK`` when its first ``Token``
event is yielded: ``{"pid", "ttft_s"}`` (from the call, ``time.monotonic``). Nothing in the product
reads the variable; without it this file does nothing.
"""

from __future__ import annotations

import os

if os.environ.get("BENCH_STREAM_CLOCK"):
    import json
    import time
    from collections.abc import AsyncIterator
    from typing import Any

    from switchboard import lifecycle
    from switchboard.api import Switchboard

    _stream = Switchboard.stream

    async def _timed(self: Switchboard, *args: Any, **kwargs: Any) -> AsyncIterator[lifecycle.Event]:
        started, told = time.monotonic(), False
        async for event in _stream(self, *args, **kwargs):
            if not told and isinstance(event, lifecycle.Token):
                told = True
                with open(os.environ["BENCH_STREAM_CLOCK"], "a", encoding="utf-8") as f:
                    f.write(json.dumps({"pid": os.getpid(), "ttft_s": time.monotonic() - started}) + "\n")
            yield event

    Switchboard.stream = _timed  # type: ignore[method-assign]
