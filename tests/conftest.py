"""Test-wide guards and fixtures.

* No network: pytest-socket blocks sockets except loopback (for the PostgreSQL/Chroma servers
  that the test setup starts itself).
* Model calls are replayed from cassettes by default; an unrecorded call fails the test.
  Re-record with ``SWITCHBOARD_RECORD_MODE=record`` (runs the real local model).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from switchboard.settings import REPO_ROOT, Settings

CASSETTES = Path(__file__).parent / "transcripts" / "cassettes"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Never let the developer's environment leak into tests (test-server URLs excepted).
_KEEP = {"SWITCHBOARD_RECORD_MODE", "SWITCHBOARD_TEST_PG_URL", "SWITCHBOARD_PG_URL",
         "SWITCHBOARD_CHINOOK_ADMIN_URL", "SWITCHBOARD_TEST_CHROMA_URL", "SWITCHBOARD_TEST_SERVERS",
         "SWITCHBOARD_LIVE_TIER", "SWITCHBOARD_UPDATE_SNAPSHOT"}
for _name in list(os.environ):
    if _name.startswith("SWITCHBOARD_") and _name not in _KEEP:
        del os.environ[_name]
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("ANTHROPIC_API_KEY", None)
os.environ["ANONYMIZED_TELEMETRY"] = "False"
# Any Settings() a test builds without a data_dir gets a throwaway one, never the repo's
# .switchboard (whose ledger cache would otherwise answer a test from an earlier run).
os.environ["SWITCHBOARD_DATA_DIR"] = tempfile.mkdtemp(prefix="switchboard-tests-")


@pytest.fixture
def make_settings(tmp_path: Path):
    """Settings isolated in tmp_path; extra keyword arguments override fields."""

    def make(**overrides) -> Settings:
        base = dict(data_dir=tmp_path / "data")
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture
def cassette_settings(request: pytest.FixtureRequest, make_settings):
    """Settings whose model calls go through this test's cassette (replay unless recording)."""
    mode = os.environ.get("SWITCHBOARD_RECORD_MODE", "replay")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path = CASSETTES / f"{request.module.__name__.rsplit('.', 1)[-1]}__{name}.yaml"
    if mode == "replay" and not path.exists():
        pytest.fail(f"no cassette {path}; record it with SWITCHBOARD_RECORD_MODE=record")
    if mode == "record" and path.exists():
        path.unlink()
    return make_settings(record_mode=mode, cassette_path=path)


def _start_server(script: str) -> tuple[dict[str, str], bool]:
    """Run one of the project's server scripts; return the variables it exports and whether this
    run started the server (one already running belongs to another session: it is not stopped)."""
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / script)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/{script} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return dict(re.findall(r"^export (\w+)=(\S+)$", proc.stdout, re.M)), "# started: yes" in proc.stdout


def pytest_configure(config: pytest.Config) -> None:
    """Install and start what the integration and browser tests need (PostgreSQL, Chroma,
    Chromium) with the project's own scripts. In CI a failure fails the run; elsewhere those
    tests skip. Set SWITCHBOARD_TEST_SERVERS=0 to do none of it."""
    if os.environ.get("SWITCHBOARD_TEST_SERVERS", "1") == "0":
        return
    needed = [
        ("postgres.sh", bool(os.environ.get("SWITCHBOARD_TEST_PG_URL"))),
        ("chroma.sh", bool(os.environ.get("SWITCHBOARD_TEST_CHROMA_URL"))),
        ("browser.sh", Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")).exists()),
    ]
    for script, ready in needed:
        if ready:
            continue
        try:
            exported, started = _start_server(script)
            os.environ.update(exported)
            if started and script != "browser.sh":  # a server this session started is stopped at its end
                _STARTED.append(script)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            if os.environ.get("CI"):
                raise pytest.UsageError(str(exc)) from exc
            SERVER_PROBLEMS.append(f"{script}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}")


_STARTED: list[str] = []
# test servers that could not be started here (outside CI): their tests skip; said in the summary
SERVER_PROBLEMS: list[str] = []
# shared data sets (../shared/data) that tests wanted and did not find: one summary line at the end
MISSING_SHARED: set[str] = set()


def require_shared(path: Path) -> Path:
    """Skip the calling test unless ``path`` (under ../shared/data) exists; remember what was missing."""
    if not path.exists():
        MISSING_SHARED.add(str(path.relative_to(SHARED_DATA) if path.is_relative_to(SHARED_DATA) else path))
        pytest.skip(f"shared data set not present: {path}")
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001 - pytest hook
    for problem in SERVER_PROBLEMS:
        terminalreporter.write_line(f"test server not started (its tests skipped): {problem}")
    if MISSING_SHARED:
        terminalreporter.write_line(
            f"shared data missing (tests that need it skipped): {', '.join(sorted(MISSING_SHARED))} "
            f"-- expected under {SHARED_DATA}")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the servers this session started: no PostgreSQL or Chroma of ours outlives the run."""
    for script in reversed(_STARTED):
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / script), "stop"], capture_output=True, timeout=120)
    _STARTED.clear()
