"""Time to the first answer as a newcomer meets it: a fresh clone, then the README's run command.

    uv run python bench/first_answer.py            # warm: uv's usual cache (wheels already built)
    uv run python bench/first_answer.py --cold     # cold: an empty uv cache (downloads, compiles llama.cpp)

It clones this repository's HEAD into a temporary folder, runs `uv sync --locked` there (timed:
the setup), then `uv run switchboard demo --json` with a fresh data directory and model cache
(timed to each answer: the first includes assembling the GGUF, the runtime's self-check, loading
the model and reading the first prompt cold). Prints the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cold", action="store_true", help="use an empty uv cache (a first install)")
    p.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = p.parse_args(argv)
    uv = shutil.which("uv")
    if uv is None:
        print("error: uv is not on PATH", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="sb-first-answer-"))
    clone = root / "switchboard"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHBOARD_", "VIRTUAL_ENV"))}
    env.update(SWITCHBOARD_DATA_DIR=str(root / "data"), SWITCHBOARD_MODEL_CACHE_DIR=str(root / "models"))
    if args.cold:
        env["UV_CACHE_DIR"] = str(root / "uv-cache")
    try:
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        started = time.monotonic()
        subprocess.run([uv, "sync", "--locked", "--quiet"], cwd=clone, env=env, check=True)
        setup = time.monotonic() - started
        print(f"setup ({'empty' if args.cold else 'warm'} uv cache): uv sync {setup:.1f} s", flush=True)
        started = time.monotonic()
        proc = subprocess.Popen([uv, "run", "--quiet", "switchboard", "demo", "--json"], cwd=clone, env=env,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                turn = json.loads(line)
                answer = " ".join(turn["answer"].split())[:90]
                print(f"  {time.monotonic() - started:6.1f} s  {turn['question']}\n           -> {answer}", flush=True)
        code = proc.wait()
        total = time.monotonic() - started
        print(f"demo: exit {code}, {total:.1f} s for the three questions; "
              f"setup + demo {setup + total:.1f} s")
        return code
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
