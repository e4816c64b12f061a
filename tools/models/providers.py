"""Building a chat model for a registry entry: OpenAI, any OpenAI-compatible server (vLLM,
Ollama, llama.cpp's server), Anthropic, or the local GGUF through llama.cpp.

:class:`ProviderConfig` carries the plain values these clients need; the composition root
(``switchboard/services.py``) fills it from the settings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from tools.models.values import ModelSpec, RegistryError


@dataclass(frozen=True)
class LocalRuntimeConfig:
    """Where the local GGUF comes from and how llama.cpp runs it."""

    model_cache_dir: Path
    threads: int
    ctx: int
    check_timeout_s: float
    gguf: Path | None = None  # None: assemble the packaged model into ``model_cache_dir``


@dataclass(frozen=True)
class ProviderConfig:
    local: LocalRuntimeConfig
    timeout_s: float
    max_retries: int
    openai_base_url: str | None = None
    secrets: Mapping[str, str] = field(default_factory=dict)  # credentials by variable name


def build_chat(spec: ModelSpec, role: str, config: ProviderConfig) -> BaseChatModel:
    """A chat model for ``spec`` (``role`` names the caller, for the local model's logs)."""
    secrets = config.secrets
    if spec.provider == "llamacpp":
        return LazyLocal(spec=spec, local=config.local, role=role)
    if spec.provider in ("openai", "openai_compatible"):
        from langchain_openai import ChatOpenAI

        kwargs: dict[str, Any] = {
            "model": spec.model, "temperature": 0, "max_retries": config.max_retries,
            "timeout": config.timeout_s, "stream_usage": True,
        }
        if spec.provider == "openai_compatible":
            kwargs["base_url"] = spec.base_url
            kwargs["api_key"] = secrets.get(spec.requires_env or "") or "not-needed"
        else:
            if config.openai_base_url:
                kwargs["base_url"] = config.openai_base_url
            if key := secrets.get(spec.requires_env or "OPENAI_API_KEY"):
                kwargs["api_key"] = key
        return ChatOpenAI(**kwargs)
    if spec.provider == "anthropic":
        try:
            from langchain_anthropic import ChatAnthropic  # optional extra
        except ImportError as exc:
            raise RegistryError("install langchain-anthropic to use Anthropic models") from exc
        key = secrets.get(spec.requires_env or "ANTHROPIC_API_KEY")
        anthropic: BaseChatModel = ChatAnthropic(model=spec.model, temperature=0, **({"api_key": key} if key else {}))
        return anthropic
    raise RegistryError(f"provider {spec.provider!r} cannot be built from the registry")


class LazyLocal(BaseChatModel):
    """Defers assembling/loading the GGUF until the first real call (replay never loads it)."""

    spec: ModelSpec
    local: LocalRuntimeConfig
    role: str

    @property
    def _llm_type(self) -> str:
        return "llamacpp-local-lazy"

    @cached_property
    def _model(self) -> BaseChatModel:
        from tools.models.local_llm import ChatLocalLlama, assemble_packaged_gguf, check_runtime

        cfg = self.local
        path = cfg.gguf or assemble_packaged_gguf(cfg.model_cache_dir)
        # A runtime that would die by a signal here fails its check in a child process instead,
        # with an error that names the fix (LocalRuntimeUnavailable); this process lives on.
        check_runtime(path, n_threads=cfg.threads, cache_dir=cfg.model_cache_dir, timeout_s=cfg.check_timeout_s)
        return ChatLocalLlama(model_path=str(path), model_name=self.spec.model, role=self.role,
                              n_ctx=cfg.ctx, n_threads=cfg.threads)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._model._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        return self._model._stream(messages, stop=stop, run_manager=run_manager, **kwargs)
