"""Test-wide guards and fixtures.

* No network: pytest-socket blocks sockets except loopback (for the PostgreSQL/Chroma servers
  that the test setup starts itself).
* Model calls are replayed from cassettes by default; an unrecorded call fails the test.
  Re-record with ``SWITCHBOARD_RECORD_MODE=record`` (runs the real local model).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from switchboard.settings import REPO_ROOT, Settings

CASSETTES = Path(__file__).parent / "transcripts" / "cassettes"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Never let the developer's environment leak into tests.
for _name in list(os.environ):
    if _name.startswith("SWITCHBOARD_") and _name not in ("SWITCHBOARD_RECORD_MODE", "SWITCHBOARD_TEST_PG_URL", "SWITCHBOARD_TEST_CHROMA_URL"):
        del os.environ[_name]
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("ANTHROPIC_API_KEY", None)
os.environ["ANONYMIZED_TELEMETRY"] = "False"


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
