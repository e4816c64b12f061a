"""The local runtime's self-check: a child process loads the model before this process does, so a
build that dies by a signal (SIGILL on a CPU it was not built for) becomes an error that names the
cause and the fix. The child's ``llama_cpp`` is a hand-written stand-in (tests/fixtures/fake_llama_cpp)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

from switchboard.services import Services
from switchboard.settings import REPO_ROOT
from tests.fakes import ScriptedChatModel
from tools.models import local_llm
from tools.models.gateway import call_model
from tools.models.local_llm import REBUILD, REBUILD_NO_AVX2, LocalRuntimeUnavailable, check_runtime

FAKES = REPO_ROOT / "tests" / "fixtures" / "fake_llama_cpp"


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"  # the stand-ins never read it; it gives the check an identity
    path.write_bytes(b"GGUF-fixture")
    return path


def use_runtime(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("PYTHONPATH", str(FAKES / name))


def test_a_runtime_that_dies_by_sigill_names_the_cause_and_the_rebuild(monkeypatch, model_file, tmp_path):
    use_runtime(monkeypatch, "sigill")
    with pytest.raises(LocalRuntimeUnavailable) as err:
        check_runtime(model_file, n_threads=2, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "SIGILL" in message and "illegal instruction" in message
    assert "uv sync --reinstall-package llama-cpp-python" in message
    assert not list((tmp_path / "cache").glob("runtime-ok-*"))

    # remembered for the process: the next use fails at once, with no second child
    monkeypatch.setattr(local_llm, "_probe", lambda *a: pytest.fail("probed twice"))
    with pytest.raises(LocalRuntimeUnavailable, match="SIGILL"):
        check_runtime(model_file, n_threads=2, cache_dir=tmp_path / "cache")


def test_a_runtime_that_never_answers_times_out_with_a_message(monkeypatch, model_file, tmp_path):
    use_runtime(monkeypatch, "hang")
    with pytest.raises(LocalRuntimeUnavailable, match="did not answer its self-check within 2 s"):
        check_runtime(model_file, n_threads=2, cache_dir=tmp_path, timeout_s=2)


def test_a_passing_check_is_cached_on_disk_by_the_build_and_model_identity(monkeypatch, model_file, tmp_path):
    use_runtime(monkeypatch, "healthy")
    check_runtime(model_file, n_threads=2, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("runtime-ok-*.json"))) == 1

    local_llm._CHECKED.clear()  # a new process: the disk cache answers, no child runs
    monkeypatch.setattr(local_llm, "_probe", lambda *a: pytest.fail("a cached check ran again"))
    check_runtime(model_file, n_threads=2, cache_dir=tmp_path)

    model_file.write_bytes(b"GGUF-fixture-2")  # another model file: another identity, checked again
    probed = []
    monkeypatch.setattr(local_llm, "_probe", lambda *a: probed.append(a) or None)
    check_runtime(model_file, n_threads=2, cache_dir=tmp_path)
    assert len(probed) == 1


def test_sigill_on_a_cpu_without_avx2_proposes_the_build_without_it(monkeypatch):
    monkeypatch.setattr(local_llm.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(local_llm, "cpu_flags", lambda: {"sse4_2", "avx"})
    message = local_llm._explain_signal(signal.SIGILL)
    assert "avx2, fma, f16c, bmi2 missing" in message and REBUILD_NO_AVX2 in message

    monkeypatch.setattr(local_llm, "cpu_flags", lambda: {"avx", "avx2", "fma", "f16c", "bmi2", "amx_tile"})
    message = local_llm._explain_signal(signal.SIGILL)
    assert "Intel AMX" in message and f"`{REBUILD}`" in message


REGISTRY = """
models:
  local:
    provider: llamacpp
    model: local
    tier: light
    enabled: true
  hosted:
    provider: fake
    model: hosted
    tier: heavy
    price: {input: 1.0, output: 2.0}
    enabled: true
"""


async def test_hosted_models_still_serve_when_the_local_runtime_fails(monkeypatch, make_settings, model_file,
                                                                      tmp_path):
    use_runtime(monkeypatch, "sigill")
    registry_file = tmp_path / "models.yaml"
    registry_file.write_text(REGISTRY)
    settings = make_settings(models_file=registry_file, local_gguf=model_file, model_cache_dir=tmp_path / "cache",
                             cache_ttl_s=0)
    registry = Services(settings).registry
    hosted = ScriptedChatModel(respond=lambda messages: "We have 59 customers.")
    registry.use_chat_model("hosted", hosted)

    reply, entry = await call_model(registry.handle("local", "sql"), [HumanMessage("How many customers?")],
                                    agent="sql", task="How many customers?")
    assert reply.content == "We have 59 customers." and entry.model == "hosted"
    assert "local: local runtime unavailable" in entry.note

    alone = Services(make_settings(models_file=registry_file, local_gguf=model_file,
                                     model_cache_dir=tmp_path / "cache")).registry
    alone.specs["hosted"].enabled = False
    with pytest.raises(LocalRuntimeUnavailable, match="SIGILL"):  # nothing else: the runtime's own message
        await call_model(alone.handle("local", "sql"), [HumanMessage("How many customers?")],
                         agent="sql", task="How many customers?")
