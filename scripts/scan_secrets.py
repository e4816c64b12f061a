"""Fail CI when a committed file holds something that looks like an API key or a bearer token.

    uv run python scripts/scan_secrets.py [ROOT]

Scans every file git knows (tracked, plus untracked files that are not ignored, so a key is
caught before its first commit); outside a git checkout it walks the tree instead. Binary files,
files over 2 MB and virtual environments are skipped. Cassettes and log fixtures are ordinary
committed files, so they are scanned like the rest.

Each hit is printed as ``path:line: kind (masked prefix)`` -- never the secret itself, since CI
logs are public -- and the exit status is 1 when there is any. The patterns are the ones
``tools.observability.redaction`` masks in logs and cassettes. A line that must hold a fake key (a scanner
test fixture) can carry the marker ``secret-scan: allow`` in a comment; tests should rather
build such strings at run time (``"sk-" + "x" * 40``) so the repository stays clean.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from tools.observability.redaction import find_secrets  # noqa: E402

ALLOW_MARKER = "secret-scan: allow"
MAX_BYTES = 2 * 1024 * 1024
SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".ruff_cache", ".pytest_cache",
                       ".mypy_cache", ".switchboard"})


@dataclass(frozen=True)
class Hit:
    path: str
    line: int
    kind: str
    masked: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind} ({self.masked})"


def mask(secret: str) -> str:
    """Enough to find the value again (its first four characters and length), not enough to use it."""
    return f"{secret[:4]}… {len(secret)} chars"


def candidate_files(root: Path) -> list[Path]:
    """Files git tracks or would add (``--others --exclude-standard``); every file when not in git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return sorted(_walk(root))
    names = sorted({n for n in out.decode("utf-8", "surrogateescape").split("\0") if n})
    return [root / n for n in names if not SKIP_DIRS.intersection(Path(n).parts)]


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            yield Path(dirpath) / name


def read_text(path: Path) -> str | None:
    """The file's text, or None for what is not worth scanning (missing, large, binary)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def scan_text(text: str, path: str) -> list[Hit]:
    """Secrets in ``text``, one hit per occurrence, except on lines carrying the allow marker."""
    hits: list[Hit] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if ALLOW_MARKER in line:
            continue
        hits += [Hit(path, lineno, f.kind, mask(f.text)) for f in find_secrets(line)]
    return hits


def scan(root: Path) -> tuple[list[Hit], int]:
    """(hits, number of files scanned) under ``root``."""
    hits: list[Hit] = []
    scanned = 0
    for path in candidate_files(root):
        text = read_text(path)
        if text is None:
            continue
        scanned += 1
        hits += scan_text(text, path.relative_to(root).as_posix())
    return hits, scanned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=ROOT, help="directory to scan (default: the repo)")
    args = parser.parse_args(argv)
    hits, scanned = scan(args.root.resolve())
    for hit in hits:
        print(hit)
    if hits:
        print(f"scan_secrets: {len(hits)} possible secret(s) in {len({h.path for h in hits})} file(s); "
              f"remove them, or build test values at run time", file=sys.stderr)
        return 1
    print(f"scan_secrets: no secrets in {scanned} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
