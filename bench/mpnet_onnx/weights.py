"""Reading all-mpnet-base-v2's weights with numpy alone: the safetensors file and MPNet's relative
position buckets. Shared by ``bench/mpnet_trial.py`` (the numpy forward pass) and ``build.py``
(the ONNX graph), which runs in a scratch venv without the project's dependencies."""

from __future__ import annotations

import json
import math
import mmap
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "I64": np.int64}


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file, memory-mapped (a plain format: no pickle)."""
    f = path.open("rb")
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    (n,) = struct.unpack("<Q", mm[:8])
    header = json.loads(mm[8:8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        dtype = np.dtype(_DTYPES[meta["dtype"]])
        out[name] = np.frombuffer(mm, dtype=dtype, count=(end - start) // dtype.itemsize,
                                  offset=8 + n + start).reshape(meta["shape"])
    return out


def relative_position_bucket(relative: np.ndarray, buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """Hugging Face ``MPNetEncoder.relative_position_bucket`` (relative = key - query position)."""
    n = -relative
    half = buckets // 2
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    exact = half // 2
    with np.errstate(divide="ignore"):
        large = exact + (np.log(np.maximum(n, 1).astype(np.float32) / exact) / math.log(max_distance / exact)
                         * (half - exact)).astype(np.int64)
    return ret + np.where(n < exact, n, np.minimum(large, half - 1))
