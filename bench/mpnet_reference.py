"""A numpy reference for the knowledge base's all-mpnet-base-v2: how far is the product's 8-bit graph?

``tools/models/mpnet.py`` builds an ONNX graph of all-mpnet-base-v2 with 8-bit blockwise weights.
This file runs the same model a second, independent way: MPNet's forward pass in float32 numpy
(Hugging Face ``MPNetModel`` semantics: RoBERTa-style position ids, T5-style relative attention
buckets, mean pooling), from the same pinned weights. It prints the cosine between the two for
the WixQA questions and for passages, and the time per query of each.

It began as the trial that chose this model (2026-12-05, on bench/rag_wixqa.py's index: mpnet +
BM25 w=0.2 recall@5 0.950, MRR 0.912 in float32; plain per-tensor int8 lost it, 0.916 / 0.882).
``tests/unit/test_knowledge_embeddings.py`` uses :class:`MPNet` to check the built graph.

    uv run python bench/mpnet_reference.py
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.rag_wixqa import DEFAULT_DATA, load_questions, read_jsonl  # noqa: E402
from tools.models.mpnet import MAX_TOKENS, parse_safetensors, read_pinned, relative_position_bucket  # noqa: E402


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return (0.5 * x * (1.0 + erf(x * np.float32(1 / math.sqrt(2))))).astype(np.float32)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    return ((xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)) * w + b).astype(np.float32)


class MPNet:
    """all-mpnet-base-v2 sentence vectors: mean-pooled, L2-normalised, 768-d."""

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        files = read_pinned(["config.json", "tokenizer.json", "model.safetensors"])  # SHA-256 checked
        self.cfg = json.loads(files["config.json"])
        self.tok = Tokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
        self.tok.no_padding()  # the file ships fixed padding to 128; batches are padded here
        self.tok.enable_truncation(max_length=MAX_TOKENS)
        w = parse_safetensors(memoryview(files["model.safetensors"]))
        self.word, self.pos = w["embeddings.word_embeddings.weight"], w["embeddings.position_embeddings.weight"]
        self.eln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.rel = w["encoder.relative_attention_bias.weight"]
        self.layers = []
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            qkv = [w[f"{p}attention.attn.{x}.weight"] for x in "qkv"]
            self.layers.append({
                "qkv_w": np.ascontiguousarray(np.concatenate(qkv, 0).T),
                "qkv_b": np.concatenate([w[f"{p}attention.attn.{x}.bias"] for x in "qkv"]),
                "o_w": np.ascontiguousarray(w[f"{p}attention.attn.o.weight"].T), "o_b": w[f"{p}attention.attn.o.bias"],
                "ln1": (w[f"{p}attention.LayerNorm.weight"], w[f"{p}attention.LayerNorm.bias"]),
                "i_w": np.ascontiguousarray(w[f"{p}intermediate.dense.weight"].T), "i_b": w[f"{p}intermediate.dense.bias"],
                "f_w": np.ascontiguousarray(w[f"{p}output.dense.weight"].T), "f_b": w[f"{p}output.dense.bias"],
                "ln2": (w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"]),
            })

    def _forward(self, id_lists: list[list[int]]) -> np.ndarray:
        pad, eps, heads = self.cfg["pad_token_id"], self.cfg["layer_norm_eps"], self.cfg["num_attention_heads"]
        b, t, d = len(id_lists), max(map(len, id_lists)), self.word.shape[1]
        ids = np.full((b, t), pad, dtype=np.int64)
        mask = np.zeros((b, t), dtype=np.int64)
        for i, x in enumerate(id_lists):
            ids[i, :len(x)], mask[i, :len(x)] = x, 1
        x = _layer_norm(self.word[ids] + self.pos[np.cumsum(mask, 1) * mask + pad], *self.eln, eps)
        pos = np.arange(t)
        bias = self.rel[relative_position_bucket(pos[None, :] - pos[:, None])].transpose(2, 0, 1)[None]
        bias = (bias + np.where(mask[:, None, None, :] == 1, 0.0, -1e9)).astype(np.float32)
        dh = d // heads
        for layer in self.layers:
            h = x.reshape(b * t, d)
            q, k, v = (h @ layer["qkv_w"] + layer["qkv_b"]).reshape(b, t, 3, heads, dh).transpose(2, 0, 3, 1, 4)
            s = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1 / math.sqrt(dh)) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = _layer_norm((s @ v).transpose(0, 2, 1, 3).reshape(b * t, d) @ layer["o_w"] + layer["o_b"] + h,
                            *layer["ln1"], eps)
            out = _gelu(a @ layer["i_w"] + layer["i_b"]) @ layer["f_w"] + layer["f_b"]
            x = _layer_norm(out + a, *layer["ln2"], eps).reshape(b, t, d)
        m = mask[:, :, None].astype(np.float32)
        pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)

    def embed(self, texts: list[str], batch: int = 16) -> np.ndarray:
        """Vectors for ``texts``, batched by length (padding is wasted work, not a change in result)."""
        ids = [e.ids for e in self.tok.encode_batch(texts)]
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(texts), self.word.shape[1]), dtype=np.float32)
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            out[idx] = self._forward([ids[i] for i in idx])
        return out


def main() -> None:
    from switchboard.settings import Settings
    from tools.models.mpnet import get_mpnet_embedder

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--passages", type=int, default=100, help="WixQA articles' openings compared too")
    args = ap.parse_args()
    reference = MPNet()
    product = get_mpnet_embedder(Settings().model_cache_dir)
    questions = [q.question for q in load_questions(args.data)]
    passages = [str(row.get("contents", row.get("text", "")))[:2000] for row in read_jsonl(args.data / "corpus.jsonl")]
    passages = [p for p in passages if p.strip()][: args.passages]
    for label, texts in (("questions", questions), ("passages", passages)):
        ref, got = reference.embed(texts), product.embed(texts)
        cos = (ref * got).sum(axis=1)
        print(f"{label:<9} n={len(texts):>3}: cosine(8-bit graph, float32 numpy) min {cos.min():.4f}, "
              f"p5 {np.percentile(cos, 5):.4f}, mean {cos.mean():.4f}")
    for name, fn in (("float32 numpy", reference.embed), ("8-bit ONNX (product)", product.embed)):
        timings = []
        for q in questions[:30]:
            product.forget_recent()
            started = time.perf_counter()
            fn([q])
            timings.append(time.perf_counter() - started)
        print(f"{name:<21} query p50 {statistics.median(timings) * 1000:.0f} ms (30 questions, one at a time)")


if __name__ == "__main__":
    main()
