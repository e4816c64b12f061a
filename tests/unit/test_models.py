"""Model registry and the local model's integrity checks."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from langchain_core.messages import HumanMessage

import tools.models.local_llm as local_llm
from switchboard.services import Services
from switchboard.settings import Settings
from tests.fakes import ScriptedChatModel
from tools.models.embeddings import ModelIntegrityError
from tools.models.gateway import call_model
from tools.models.registry import read_registry_file
from tools.models.values import RegistryError


def test_offline_default_is_the_local_model_for_every_agent():
    reg = Services(Settings()).registry
    assert [m.name for m in reg.available()] == ["local-qwen2.5-coder-1.5b"]
    for agent in ("triage", "sql", "rag", "vision", "general"):
        assert reg.for_agent(agent).spec.provider == "llamacpp"


def test_hosted_models_become_available_with_their_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-" + "0" * 21)
    reg = Services(Settings()).registry
    assert reg.pick("heavy").name == "gpt-4o"
    assert reg.pick("light", capability="vision").name == "gpt-4o-mini"
    hard = "Prove that there are infinitely many primes and derive their asymptotic density"
    assert reg.for_agent("sql", policy="best-quality", task=hard).spec.name == "gpt-4o"
    assert reg.for_agent("sql", policy="cost-saver", task=hard).spec.name == "local-qwen2.5-coder-1.5b"


def test_a_key_in_the_env_file_enables_the_hosted_models_and_reaches_the_client(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    key = "sk-dotenv-" + "1" * 21
    env_file = tmp_path / ".env"
    env_file.write_text(f"OPENAI_API_KEY={key}\n")
    reg = Services(Settings(_env_file=env_file)).registry
    assert reg.pick("heavy").name == "gpt-4o"
    chat = reg.build_chat(reg.specs["gpt-4o"], "sql")
    assert chat.openai_api_key.get_secret_value() == key


def test_no_model_with_a_capability_is_a_clear_error():
    reg = Services(Settings()).registry
    with pytest.raises(RegistryError, match="capability 'vision'"):
        reg.pick("light", capability="vision")


def test_unknown_fallback_in_registry_file_is_rejected(tmp_path):
    f = tmp_path / "models.yaml"
    f.write_text("models:\n  a: {provider: openai, model: x, fallbacks: [nope]}\n")
    with pytest.raises(RegistryError, match="unknown fallbacks"):
        read_registry_file(f)


def test_call_model_prices_tokens_from_the_registry(monkeypatch, make_settings):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-" + "0" * 21)
    reg = Services(make_settings()).registry
    reg.use_chat_model("gpt-4o", ScriptedChatModel(respond=lambda m: "one two three"))
    msg, entry = asyncio.run(call_model(reg.handle("gpt-4o"), [HumanMessage("a b")], agent="general", task="t"))
    assert msg.content == "one two three"
    assert (entry.tokens_in, entry.tokens_out) == (2, 3)
    assert entry.cost_usd == pytest.approx((2 * 2.50 + 3 * 10.00) / 1e6)
    assert entry.model_version == "gpt-4o-2024-11-20"


def _fake_parts(tmp_path, monkeypatch, payloads):
    paths = []
    for i, data in enumerate(payloads, 1):
        p = tmp_path / f"part{i:02d}.bin"
        p.write_bytes(data)
        paths.append(p)
    monkeypatch.setattr(local_llm, "N_PARTS", len(paths))
    monkeypatch.setattr(local_llm, "_part_path", lambda i: paths[i - 1])
    return paths


def test_gguf_is_assembled_in_order_and_verified(tmp_path, monkeypatch):
    payloads = [b"GGUF" + b"a" * 10, b"b" * 7, b"c" * 3]
    whole = b"".join(payloads)
    _fake_parts(tmp_path, monkeypatch, payloads)
    monkeypatch.setattr(local_llm, "GGUF_SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(local_llm, "GGUF_SIZE", len(whole))
    out = local_llm.assemble_packaged_gguf(tmp_path / "cache", progress=False)
    assert out.read_bytes() == whole
    # second call trusts the marker and does not rebuild
    mtime = out.stat().st_mtime_ns
    assert local_llm.assemble_packaged_gguf(tmp_path / "cache", progress=False).stat().st_mtime_ns == mtime


def test_gguf_with_wrong_digest_is_refused_and_not_left_behind(tmp_path, monkeypatch):
    _fake_parts(tmp_path, monkeypatch, [b"tampered", b"weights"])
    monkeypatch.setattr(local_llm, "GGUF_SIZE", 15)
    with pytest.raises(ModelIntegrityError, match="refusing"):
        local_llm.assemble_packaged_gguf(tmp_path / "cache", progress=False)
    assert not any((tmp_path / "cache").iterdir())


def test_tampered_cached_gguf_is_rebuilt_from_the_parts(tmp_path, monkeypatch):
    payloads = [b"good", b"data"]
    _fake_parts(tmp_path, monkeypatch, payloads)
    monkeypatch.setattr(local_llm, "GGUF_SHA256", hashlib.sha256(b"gooddata").hexdigest())
    monkeypatch.setattr(local_llm, "GGUF_SIZE", 8)
    out = local_llm.assemble_packaged_gguf(tmp_path / "cache", progress=False)
    out.write_bytes(b"evil!!!!")  # changes size/mtime, so the marker no longer vouches for it
    assert local_llm.assemble_packaged_gguf(tmp_path / "cache", progress=False).read_bytes() == b"gooddata"
