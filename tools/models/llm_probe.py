"""The local runtime's self-check, run as a child process by ``tools.models.local_llm.check_runtime``.

It loads the GGUF with llama.cpp and generates two tokens, with the thread count the process will
use: a runtime compiled for instructions this CPU lacks (or llama.cpp's AMX path, whose worker
threads fault) dies here, by a signal, instead of in the process that serves users. Run as a
script (``python llm_probe.py MODEL THREADS``), it imports nothing of the project.
"""

from __future__ import annotations

import json
import sys
import time
from typing import cast


def main(argv: list[str]) -> int:
    model_path, n_threads = argv[0], int(argv[1])
    started = time.monotonic()
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model_path, n_ctx=256, n_threads=n_threads, n_batch=64,
                          use_mmap=True, verbose=False, seed=0)
    loaded = time.monotonic()
    # not streamed, so one response (llama_cpp types the return as response | iterator)
    out = cast("llama_cpp.CreateCompletionResponse",
               llm.create_completion("The capital of France is", max_tokens=2, temperature=0.0))
    text = out["choices"][0]["text"]
    print(json.dumps({"ok": True, "text": text, "load_s": round(loaded - started, 2),
                      "generate_s": round(time.monotonic() - loaded, 2),
                      "llama_cpp": getattr(llama_cpp, "__version__", "?")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
