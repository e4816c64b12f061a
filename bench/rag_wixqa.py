"""Retrieval and answer quality of the knowledge-base specialist on WixQA (expert-written sample).

What it measures, on what users get (``knowledge.ingest`` chunking + MiniLM embeddings + Chroma):

* **Corpus**: the 173 Wix Help Center articles of the WixQA sample plus distractors that are
  *not* Wix articles (at least as many as the corpus):
  - the 14-article Chinook demo help center (``knowledge/helpcenter``);
  - SYNTHETIC help-center articles about fictional products, assembled by a seeded generator
    from ``bench/data/rag_distractor_templates.yaml`` (plans, billing, refunds, passwords,
    bookings...: the vocabulary of support questions, none of the answers);
  - the long descriptions (READMEs) of installed Python packages whose metadata declares a
    permissive licence (MIT, BSD, Apache, ISC, PSF), read from ``site-packages`` metadata,
    cut to 2,400 characters like the WixQA articles.
* **Retrieval** (all questions): recall@1/3/5/10 -- the share of a question's gold articles
  among the top k *articles* (chunks deduplicated by article, best chunk first), averaged over
  questions -- hit@k (any gold article in the top k), MRR of the first gold article, query
  latency p50/p95, ingestion throughput. Also what the answer model gets: whether a gold
  article is among the ``--k`` passages, for raw top chunks vs. one best chunk per article.
  Baselines: BM25 (Okapi, k1=1.5, b=0.75, numpy, same chunks and title prefix) and a
  reciprocal-rank fusion (RRF, k=60) of BM25 and dense.
* **Answers** (a seeded subset, ``--answers N``): the real ``RAGAgent`` over the same index and
  model (``--model``), scored against the expert answers with
  (a) cosine similarity of MiniLM embeddings (mean), (b) SQuAD token F1, (c) ROUGE-L F1
  (LCS over the same tokens), (d) citation correctness: the share of answers that cite at
  least one passage and all of whose cited passages come from a gold article (uncited and
  "could not find" answers count as incorrect); also (e) declined: the share of answers saying
  the help center does not cover it (a wording heuristic; all gold articles exist, so every
  decline is a miss). Text is normalised SQuAD-style (lower case,
  no punctuation, no a/an/the); Markdown links keep their text, URLs and ``[n]`` markers are
  removed; our "Sources:" line is not scored. Expert answers are long (mean ~990 characters)
  while the agent answers in at most two sentences, so F1 and ROUGE-L are recall-limited.

    .venv/bin/python bench/rag_wixqa.py                       # retrieval (160) + 40 answers, local model
    .venv/bin/python bench/rag_wixqa.py --answers 0           # retrieval only (~2 min)
    .venv/bin/python bench/rag_wixqa.py --passages both       # answers with chunks and with articles
    .venv/bin/python bench/rag_wixqa.py --workdir /tmp/wixqa --rag-system-file prompt.txt  # prompt trial
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import statistics
import string
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from langchain_core.messages import HumanMessage, SystemMessage

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from agents import prompts, rag  # noqa: E402
from agents.rag import TOP_K, RAGAgent  # noqa: E402
from knowledge.ingest import IngestReport, ingest  # noqa: E402
from knowledge.lexical import BM25  # noqa: E402
from knowledge.store import PER_SOURCE_DEPTH, Hit, KnowledgeStore, best_per_source  # noqa: E402
from switchboard.services import Services  # noqa: E402
from switchboard.settings import Settings  # noqa: E402
from tools.models.gateway import call_model  # noqa: E402
from tools.models.knowledge_embeddings import KNOWLEDGE_EMBEDDINGS  # noqa: E402
from tools.models.registry import ModelHandle  # noqa: E402
from tools.models.values import TierDecision  # noqa: E402
from tools.observability.stats import percentile  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/rag/wixqa_sample"
DEFAULT_NEGATIVES = Path(__file__).resolve().parents[1].parent / "shared/data/intents/clinc150/data_full.json"
THRESHOLDS = (0.25, 0.30, 0.35, 0.40, 0.45)
# The baseline the specialist is measured against: the same model, the same top passages, one call,
# the usual RAG instruction (including "say so if the passages do not answer"), nothing around it.
MODEL_ALONE_SYSTEM = """Answer the customer's question using only the help-center passages given.
Cite each statement with the passage number in brackets, like [1].
If the passages do not contain the answer, say you could not find it in the help center.
Answer in at most two sentences."""
HELPCENTER = ROOT / "knowledge" / "helpcenter"
TEMPLATES = Path(__file__).parent / "data" / "rag_distractor_templates.yaml"
COLLECTION = "wixqa-bench"
KS = (1, 3, 5, 10)  # 3: the passages the agent reads (TOP_K)
ARTICLE_CHARS = 2400  # the WixQA sample truncates its articles to this; distractors match
RRF_K = 60
PassageMode = Literal["chunks", "articles"]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    gold: frozenset[str]  # article sources, as the store names them: "<corpus path>#<id>"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_questions(data_dir: Path) -> list[Question]:
    """The QA pairs, with gold ids turned into store sources so hits compare directly."""
    corpus = (data_dir / "corpus.jsonl").absolute()
    ids = {row["id"] for row in read_jsonl(corpus)}
    out = []
    for row in read_jsonl(data_dir / "qa.jsonl"):
        missing = [g for g in row["gold_article_ids"] if g not in ids]
        if missing:
            raise SystemExit(f"{row['id']}: gold article(s) {missing} are not in {corpus}")
        gold = frozenset(f"{corpus}#{g}" for g in row["gold_article_ids"])
        out.append(Question(row["id"], row["question"], row["answer"], gold))
    return out


# --------------------------------------------------------------------------- distractors


def synthetic_articles(seed: int, limit: int | None = None) -> list[dict[str, str]]:
    """Help-center-style articles about FICTIONAL products, from templates (seeded, reproducible).

    Hard-ish negatives on purpose: they talk about plans, refunds, payments and sign-in like
    the Wix questions do, so a retriever that only matches support vocabulary is penalised.
    """
    spec = yaml.safe_load(TEMPLATES.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    out = []
    for product in spec["products"]:
        for topic in spec["topics"]:
            if product["kind"] in topic.get("applies_to", [product["kind"]]):
                out.append(_synthetic_article(product, topic, rng))
    return out[:limit] if limit is not None else out


def _synthetic_article(product: dict[str, Any], topic: dict[str, Any], rng: random.Random) -> dict[str, str]:
    fill = {
        **{k: v for k, v in product.items() if isinstance(v, str)},
        **{f"plan{i}": p for i, p in enumerate(product["plans"])},
        "days": rng.choice([7, 14, 30, 60]),
        "hours": rng.choice([2, 4, 24, 48]),
        "n": rng.choice([3, 5, 10, 20]),
        "price": f"{rng.choice(['US$', '€', '£'])}{rng.choice([19, 49, 99, 149, 240])}",
        "open": rng.choice([7, 8, 9]),
        "close": rng.choice([17, 18, 20]),
    }
    title = rng.choice(topic["titles"]).format(**fill)
    notes = rng.sample(topic["notes"], k=min(2, len(topic["notes"])))
    paragraphs = [f"{product['name']} is {product['what']}. " + rng.choice(topic["intro"]), *topic["steps"], *notes]
    text = "\n\n".join(p.format(**fill) for p in paragraphs)
    return {
        "id": f"{product['slug']}-{topic['slug']}",
        "title": title,
        "url": f"https://help.{product['slug']}.example/articles/{topic['slug']}",
        "text": f"{title}\n\n{text}",
    }


_PERMISSIVE = re.compile(r"\b(MIT|BSD|Apache|ISC|PSF|Python Software Foundation|0BSD|Zlib)\b", re.IGNORECASE)
_NOT_PERMISSIVE = re.compile(r"GPL|MPL|Mozilla|Elastic|CNRI|Proprietary|Commercial", re.IGNORECASE)


def permissive_licence(meta: Any) -> str | None:
    """The declared licence when it is clearly permissive; None when unclear or copyleft.

    Reads ``License-Expression``, the first line of ``License`` and the ``License ::``
    classifiers. Anything mentioning a copyleft or source-available licence is left out.
    """
    declared = meta.get("License-Expression") or (meta.get("License") or "").strip().split("\n")[0][:120]
    classifiers = [c for c in (meta.get_all("Classifier") or []) if c.startswith("License ::")]
    text = " ".join([declared, *classifiers])
    if not _PERMISSIVE.search(text) or _NOT_PERMISSIVE.search(text):
        return None
    return declared or classifiers[0].rsplit("::", 1)[-1].strip()


def package_readmes(limit: int, min_chars: int = 800) -> list[dict[str, str]]:
    """Long descriptions of installed, permissively licensed packages (sorted by name).

    Real prose from a different domain (software documentation), so the distractors are not
    all written by one template engine. The project's own package is left out.
    """
    out = []
    seen: set[str] = set()
    dists = sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower())
    for dist in dists:
        meta = dist.metadata
        name = meta["Name"] or ""
        body = (meta.get_payload() or meta.get("Description") or "").strip()
        key = name.lower()
        if not name or key in seen or key == "switchboard" or len(body) < min_chars:
            continue
        licence = permissive_licence(meta)
        if licence is None:
            continue
        seen.add(key)
        out.append({
            "id": f"pypi-{key}",
            "title": f"{name} {meta['Version']} (Python package description, {licence})",
            "url": f"https://pypi.org/project/{name}/",
            "text": body[:ARTICLE_CHARS],
        })
        if len(out) >= limit:
            break
    return out


def write_jsonl(path: Path, rows: Iterable[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- index


@dataclass
class Index:
    store: KnowledgeStore
    report: IngestReport
    docs: dict[str, int]  # documents per group
    fresh: bool  # False when an existing --workdir index was reused (throughput meaningless)


def build_index(workdir: Path, data_dir: Path, *, seed: int, synthetic: int, pydocs: int,
                embeddings: str = "mpnet") -> Index:
    """Write the distractor files, then ingest everything through ``knowledge.ingest``.

    The embedder is loaded and warmed before the clock starts: loading the ONNX model is a
    one-off per process, not ingestion throughput.
    """
    syn = synthetic_articles(seed, synthetic)
    readmes = package_readmes(pydocs)
    paths = [
        (data_dir / "corpus.jsonl").absolute(),
        HELPCENTER,
        write_jsonl(workdir / "distractors" / "synthetic.jsonl", syn),
        write_jsonl(workdir / "distractors" / "pydocs.jsonl", readmes),
    ]
    docs = {
        "wixqa": len(read_jsonl(paths[0])),
        "helpcenter": len(list(HELPCENTER.glob("*.md"))),
        "synthetic": len(syn),
        "pydocs": len(readmes),
    }
    # one collection per embedding model, so a kept --workdir holds both
    store = KnowledgeStore.open(chroma_dir=workdir / "chroma", name=f"{COLLECTION}-{embeddings}", embeddings=embeddings,
                                model_cache=Settings().model_cache_dir)
    store.embedder.embed(["warm-up"])
    fresh = store.count() == 0
    report = ingest(paths, store, progress=False)
    if report.skipped:
        raise SystemExit("ingestion skipped files:\n" + report.summary())
    return Index(store, report, docs, fresh)


# --------------------------------------------------------------------------- retrieval


def dedupe_sources(sources: Iterable[str]) -> list[str]:
    """Articles in first-seen order: an article ranks where its best chunk ranks."""
    return list(dict.fromkeys(sources))


@dataclass
class RankingMetrics:
    recall: dict[int, float]
    hit: dict[int, float]
    mrr: float


def ranking_metrics(rankings: Sequence[Sequence[str]], questions: Sequence[Question], ks: Sequence[int] = KS) -> RankingMetrics:
    """recall@k (share of gold articles in the top k, averaged), hit@k, and MRR of the first gold."""
    recall = {k: statistics.fmean(len(q.gold & set(r[:k])) / len(q.gold) for r, q in zip(rankings, questions, strict=True)) for k in ks}
    hit = {k: statistics.fmean(bool(q.gold & set(r[:k])) for r, q in zip(rankings, questions, strict=True)) for k in ks}
    mrr = statistics.fmean(_reciprocal_rank(r, q.gold) for r, q in zip(rankings, questions, strict=True))
    return RankingMetrics(recall, hit, mrr)


def _reciprocal_rank(ranking: Sequence[str], gold: frozenset[str]) -> float:
    return next((1.0 / i for i, s in enumerate(ranking, 1) if s in gold), 0.0)


@dataclass
class DenseRun:
    hits: list[list[Hit]]
    rankings: list[list[str]]
    latency_ms: list[float]


def dense_search(store: KnowledgeStore, questions: Sequence[Question], depth: int) -> DenseRun:
    """Search every question ``depth`` chunks deep (enough chunks to rank 10+ articles)."""
    run = DenseRun([], [], [])
    for q in questions:
        started = time.perf_counter()
        hits = store.search(q.question, k=depth)
        run.latency_ms.append((time.perf_counter() - started) * 1000)
        run.hits.append(hits)
        run.rankings.append(dedupe_sources(h.source for h in hits))
    return run


def time_queries(store: KnowledgeStore, questions: Sequence[Question], k: int) -> list[float]:
    """Latency of the query the agent actually makes (``k`` chunks), embedding included."""
    out = []
    for q in questions:
        store.forget_recent()  # each question was searched before: time it as a new one
        started = time.perf_counter()
        store.search(q.question, k=k)
        out.append((time.perf_counter() - started) * 1000)
    return out


def bm25_rankings(store: KnowledgeStore, questions: Sequence[Question], depth: int) -> list[list[str]]:
    chunks = store.embedded_chunks()
    sources = [source for _, source, _ in chunks]
    bm25 = BM25([text for _, _, text in chunks])
    out = []
    for q in questions:
        top = np.argsort(-bm25.scores(q.question), kind="stable")[:depth]
        out.append(dedupe_sources(sources[i] for i in top))
    return out


def rrf(*rankings: Sequence[str], k: int = RRF_K) -> list[str]:
    """Reciprocal-rank fusion of article rankings: sum of 1 / (k + rank)."""
    score: dict[str, float] = {}
    for ranking in rankings:
        for rank, source in enumerate(ranking, 1):
            score[source] = score.get(source, 0.0) + 1.0 / (k + rank)
    return sorted(score, key=lambda s: -score[s])


@dataclass
class PassageStats:
    gold_in_passages: float  # share of questions with a gold article among the passages
    gold_recall: float  # share of gold articles among the passages, averaged
    distinct_articles: float  # mean number of distinct articles among the passages
    refused: float  # share of questions whose best passage is below the relevance floor


def passage_stats(run: DenseRun, questions: Sequence[Question], k: int, mode: PassageMode, min_score: float) -> PassageStats:
    """What the answer model would be given: ``k`` passages, raw chunks or one per article."""
    picked = [_passages(hits, k, mode, min_score) for hits in run.hits]
    sources = [{h.source for h in p} for p in picked]
    return PassageStats(
        gold_in_passages=statistics.fmean(bool(q.gold & s) for q, s in zip(questions, sources, strict=True)),
        gold_recall=statistics.fmean(len(q.gold & s) / len(q.gold) for q, s in zip(questions, sources, strict=True)),
        distinct_articles=statistics.fmean(len(s) for s in sources),
        refused=statistics.fmean(not p for p in picked),
    )


def _passages(hits: Sequence[Hit], k: int, mode: PassageMode, min_score: float) -> list[Hit]:
    # the same selection as KnowledgeStore.search(per_source=True): k distinct in k * depth chunks
    chosen = best_per_source(hits[: k * PER_SOURCE_DEPTH], k) if mode == "articles" else list(hits[:k])
    return [h for h in chosen if h.score >= min_score]


# --------------------------------------------------------------------------- the decline decision


def load_negatives(path: Path, n: int, seed: int) -> list[str]:
    """``n`` out-of-scope questions of CLINC150's test split (CC BY 3.0): nothing a help center answers."""
    if n <= 0:
        return []
    if not path.is_file():
        raise SystemExit(f"CLINC150 not found: {path} (pass --negatives-file, or --negatives 0)")
    rows = json.loads(path.read_text(encoding="utf-8"))["oos_test"]
    return random.Random(seed).sample([text for text, _ in rows], min(n, len(rows)))


def top_scores(store: KnowledgeStore, queries: Sequence[str], k: int) -> list[float]:
    """The best passage's cosine for each query, as the agent searches (hybrid, ``k`` chunks)."""
    return [max((h.score for h in store.search(q, k=k)), default=-1.0) for q in queries]


def print_declines(positives: Sequence[float], negatives: Sequence[float], chosen: float) -> None:
    """The decline decision (best cosine < threshold) on answerable and on out-of-scope questions."""
    print(f"\nDecline decision by retrieval score: {len(positives)} WixQA questions (all answerable) and "
          f"{len(negatives)} CLINC150 out-of-scope questions (none is)")
    print(f"{'threshold':>9} {'WixQA declined':>15} {'out-of-scope declined':>22}")
    for t in sorted({*THRESHOLDS, chosen}):
        mark = "  <- the agent's" if t == chosen else ""
        wrong = statistics.fmean(p < t for p in positives)
        right = statistics.fmean(n < t for n in negatives) if negatives else float("nan")
        print(f"{t:>9.2f} {wrong:>15.3f} {right:>22.3f}{mark}")


# --------------------------------------------------------------------------- answers


_LINK = re.compile(r"\[([^\]]*)\]\((?:[^()]|\([^)]*\))*\)")
_URL = re.compile(r"https?://\S+")
_CITE = re.compile(r"\[\d+\]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def answer_body(agent_answer: str) -> str:
    """The model's answer without our appended "Sources:" / "(Not traced ...)" line."""
    return re.split(r"\n\n(?:Sources: |\(Not traced to a passage)", agent_answer, maxsplit=1)[0]


def normalise(text: str) -> list[str]:
    """SQuAD normalisation, after keeping link text, dropping URLs and [n] citation markers."""
    text = _CITE.sub(" ", _URL.sub(" ", _LINK.sub(r"\1", text)))
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return text.split()


_DECLINED = re.compile(
    r"\b(?:could not|couldn't|cannot|can't|unable to) find\b[^.]*\b(?:help[- ]?cent(?:er|re)|passages?)\b"
    r"|\bpassages? (?:do|does) not (?:contain|mention|say|cover)\b",
    re.IGNORECASE,
)


def declined(body: str) -> bool:
    """Whether the model said the passages do not answer (as RAG_SYSTEM tells it to).

    A heuristic on the wording the local model uses ("You could not find it in the help
    center."); it only counts, it never changes a score.
    """
    return bool(_DECLINED.search(body))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalise(prediction), normalise(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return float(pred == ref)
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence, two-row dynamic programming."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) over normalised tokens."""
    pred, ref = normalise(prediction), normalise(reference)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return 2 * p * r / (p + r)


@dataclass
class AnswerRecord:
    question: Question
    answer: str
    cited_sources: list[str]
    retrieved: list[str]
    refused: bool  # the agent found nothing relevant and did not call the model
    seconds: float
    scores: dict[str, float] = field(default_factory=dict)


def make_services(store: KnowledgeStore, workdir: Path, model: str) -> Services:
    """Services whose knowledge base is the bench index and whose RAG model is ``model``.

    ``kb`` is a cached_property: setting it in ``__dict__`` replaces it without opening (and
    demo-ingesting) the default collection. The registry's choice by tier is pinned to the
    requested model so ``--model`` means exactly that model.
    """
    services = Services(Settings(data_dir=workdir / "switchboard", cache_ttl_s=0))  # every answer timed for real
    services.__dict__["kb"] = store
    registry = services.registry
    spec = registry.specs.get(model)
    if spec is None:
        raise SystemExit(f"unknown model {model!r}; the registry has: {', '.join(registry.specs)}")
    if not spec.available():
        raise SystemExit(f"model {model!r} is not available: enable it or set {spec.requires_env}")

    def pinned(agent: str, policy: str | None = None, *, task: str | None = None,
               capability: str | None = None) -> tuple[ModelHandle, TierDecision]:
        return registry.handle(model, role=agent), TierDecision(spec.tier, f"pinned by the benchmark: {model}")

    registry.route = pinned  # type: ignore[method-assign]
    return services


def default_model() -> str:
    """The registry's local (llama.cpp) model: what Switchboard uses offline."""
    registry = Services(Settings()).registry
    local = [s.name for s in registry.specs.values() if s.provider == "llamacpp"]
    if not local:
        raise SystemExit("no llama.cpp model in the registry; pass --model NAME")
    return local[0]


def handoff(question: Question, n: int) -> dict[str, Any]:
    subtask = {"id": f"t{n}", "agent": "rag", "task": question.question, "route": "wixqa",
               "confidence": 1.0, "scores": {}, "reason": "benchmark", "depends_on": [], "extract_only": False}
    return {"subtask": subtask, "summary": "", "entities": {}, "evidence": [], "image_path": None, "policy": "balanced"}


async def run_answers(agent: RAGAgent, questions: Sequence[Question], label: str) -> list[AnswerRecord]:
    out = []
    for n, q in enumerate(questions, 1):
        started = time.perf_counter()
        update = await agent(handoff(q, n))  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        result = update["results"][0]
        if not result["ok"]:
            raise SystemExit(f"{q.id}: the RAG agent failed: {result['error']}")
        ev = result["evidence"]
        cited = [c.get("source", "") for c in ev.get("citations", [])]
        refused = "retrieved" in ev and not ev.get("model")
        retrieved = [r["source"] for r in ev.get("retrieved", [])]
        out.append(AnswerRecord(q, result["answer"], cited, retrieved, refused, seconds))
        print(f"  [{label} {n}/{len(questions)}] {seconds:5.1f} s  {q.id}  cited={len(cited)}", flush=True)
    return out


async def run_model_alone(handle: ModelHandle, store: KnowledgeStore, questions: Sequence[Question],
                          k: int) -> list[AnswerRecord]:
    """The baseline: the top ``k`` passages of the same search, one call, MODEL_ALONE_SYSTEM, no lead,
    no attribution, no decline decision; its ``[n]`` markers are its citations."""
    out = []
    for n, q in enumerate(questions, 1):
        started = time.perf_counter()
        hits = store.search(q.question, k=k)
        messages = [SystemMessage(MODEL_ALONE_SYSTEM),
                    HumanMessage(f"<passages>\n{rag.format_passages(hits)}\n</passages>\nQuestion: {q.question}")]
        reply, _ = await call_model(handle, messages, agent="alone", task=q.question, max_tokens=160)
        text = str(reply.content).strip()
        cited = list(dict.fromkeys(hits[int(m) - 1].source for m in re.findall(r"\[(\d+)\]", text)
                                   if 0 < int(m) <= len(hits)))
        seconds = time.perf_counter() - started
        out.append(AnswerRecord(q, text, cited, [h.source for h in hits], False, seconds))
        print(f"  [alone {n}/{len(questions)}] {seconds:5.1f} s  {q.id}  cited={len(cited)}", flush=True)
    return out


def score_answers(records: Sequence[AnswerRecord], store: KnowledgeStore) -> None:
    """Fill each record's scores: cosine, token F1, ROUGE-L, citation correctness."""
    bodies = [answer_body(r.answer) for r in records]
    refs = [r.question.answer for r in records]
    emb = store.embedder
    sims = np.sum(emb.embed(bodies) * emb.embed(refs), axis=1)
    for r, body, ref, sim in zip(records, bodies, refs, sims, strict=True):
        # a citation names the article's file and record ("corpus.jsonl#id"), never the server path
        cited, gold = {rag.file_ref(s) for s in r.cited_sources}, {rag.file_ref(g) for g in r.question.gold}
        r.scores = {
            "cosine": float(sim),
            "f1": token_f1(body, ref),
            "rouge_l": rouge_l(body, ref),
            "cite_ok": float(bool(cited) and cited <= gold),
            "cite_any": float(bool(cited & gold)),
            "declined": float(r.refused or declined(body)),
        }


# --------------------------------------------------------------------------- report


def pct(values: Sequence[float], q: float) -> float:
    return percentile(values, q) if len(values) else float("nan")


def print_index(index: Index) -> None:
    r = index.report
    total = sum(index.docs.values())
    print(f"\nCorpus: {index.docs['wixqa']} WixQA articles + distractors: {index.docs['helpcenter']} Chinook demo "
          f"help-center articles, {index.docs['synthetic']} SYNTHETIC articles about fictional products "
          f"(templates, {TEMPLATES.relative_to(ROOT)}), {index.docs['pydocs']} READMEs of installed "
          f"permissively licensed Python packages = {total} documents, {index.store.count()} chunks")
    if index.fresh:
        print(f"Ingestion (knowledge.ingest, chunk 800/120, {index.store.embedder.name}, embedded Chroma): {r.added} docs, "
              f"{r.chunks} chunks in {r.seconds:.1f} s = {r.chunks / r.seconds:.1f} chunks/s, "
              f"{r.added / r.seconds:.1f} docs/s")
    else:
        print(f"Ingestion: reused an existing index ({r.unchanged} unchanged, {r.added + r.updated} written); "
              "no throughput figure")


def print_retrieval(rows: dict[str, RankingMetrics], n: int) -> None:
    head = " ".join(f"{f'R@{k}':>6}" for k in KS) + " " + " ".join(f"{f'hit@{k}':>6}" for k in KS)
    print(f"\nRetrieval over {n} questions (articles deduplicated, best chunk first)")
    print(f"{'method':<28} {head} {'MRR':>6}")
    for name, m in rows.items():
        vals = " ".join(f"{m.recall[k]:>6.3f}" for k in KS) + " " + " ".join(f"{m.hit[k]:>6.3f}" for k in KS)
        print(f"{name:<28} {vals} {m.mrr:>6.3f}")


def print_passages(rows: dict[str, PassageStats], k: int, min_score: float) -> None:
    print(f"\nPassages given to the answer model (k={k}, min score {min_score:.2f})")
    print(f"{'selection':<28} {'gold in k':>9} {'gold recall':>11} {'articles':>8} {'refused':>7}")
    for name, s in rows.items():
        print(f"{name:<28} {s.gold_in_passages:>9.3f} {s.gold_recall:>11.3f} {s.distinct_articles:>8.2f} {s.refused:>7.3f}")


def print_answers(runs: dict[str, list[AnswerRecord]], model: str) -> None:
    print(f"\nAnswers vs expert answers (model {model})")
    print(f"{'passages':<10} {'n':>3} {'cosine':>7} {'tok F1':>7} {'ROUGE-L':>7} {'cite ok':>7} {'cite any':>8} "
          f"{'declined':>8} {'p50 s':>6} {'total s':>7}")
    for label, recs in runs.items():
        mean = {key: statistics.fmean(r.scores[key] for r in recs) for key in recs[0].scores}
        secs = [r.seconds for r in recs]
        print(f"{label:<10} {len(recs):>3} {mean['cosine']:>7.3f} {mean['f1']:>7.3f} {mean['rouge_l']:>7.3f} "
              f"{mean['cite_ok']:>7.3f} {mean['cite_any']:>8.3f} {mean['declined']:>8.3f} "
              f"{statistics.median(secs):>6.1f} {sum(secs):>7.0f}")
    print("cosine: MiniLM cosine(answer, expert answer); tok F1: SQuAD token F1; ROUGE-L: LCS F1 on the same tokens;\n"
          "cite ok: cites >= 1 passage and every cited passage is from a gold article (uncited/refused = wrong);\n"
          "cite any: at least one cited passage is from a gold article;\n"
          "declined: share of answers saying the help center does not cover it (model or no relevant passage).")


def print_gain(alone: Sequence[AnswerRecord], agent: Sequence[AnswerRecord], label: str) -> None:
    """The specialist against the model alone on the same questions: ratios and a paired bootstrap."""
    rng = random.Random(0)
    for key in ("cosine", "f1", "cite_ok", "declined"):
        a = [r.scores[key] for r in alone]
        b = [r.scores[key] for r in agent]
        diffs = [y - x for x, y in zip(a, b, strict=True)]
        boots = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(2000))
        ratio = statistics.fmean(b) / statistics.fmean(a) if statistics.fmean(a) else float("inf")
        print(f"  {label} vs alone, {key:<8}: {statistics.fmean(a):.3f} -> {statistics.fmean(b):.3f} "
              f"(x{ratio:.2f}; difference 95% CI {boots[50]:+.3f}..{boots[1949]:+.3f})")


def dump_answers(path: Path, runs: dict[str, list[AnswerRecord]]) -> None:
    rows = [{"passages": label, "id": r.question.id, "question": r.question.question, "answer": r.answer,
             "expert": r.question.answer, "cited": r.cited_sources,
             "retrieved": r.retrieved, "gold": sorted(r.question.gold), "seconds": round(r.seconds, 2), **r.scores}
            for label, recs in runs.items() for r in recs]
    write_jsonl(path, rows)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with corpus.jsonl and qa.jsonl")
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions (retrieval)")
    ap.add_argument("--answers", type=int, default=40, help="answer a seeded sample of N questions (0: none)")
    ap.add_argument("--model", default=None, help="registry model name for answers (default: the local model)")
    ap.add_argument("--k", type=int, default=TOP_K, help="passages given to the answer model")
    ap.add_argument("--embeddings", choices=KNOWLEDGE_EMBEDDINGS, default="mpnet",
                    help="the knowledge base's embedding model (default: the product's, mpnet)")
    ap.add_argument("--min-score", type=float, default=None, help="decline below this best cosine "
                    "(default: the embedding model's relevance floor)")
    ap.add_argument("--margin", type=float, default=None,
                    help="passages within this much of the best one's relevance reach the model")
    ap.add_argument("--passages", choices=["chunks", "articles", "both"], default=None,
                    help="answer with raw top chunks, one chunk per article, or both (default: the agent's default)")
    ap.add_argument("--depth", type=int, default=60, help="chunks fetched per query to rank articles")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--negatives", type=int, default=160, help="CLINC150 out-of-scope questions for the decline decision")
    ap.add_argument("--negatives-file", type=Path, default=DEFAULT_NEGATIVES)
    ap.add_argument("--alone", action=argparse.BooleanOptionalAction, default=True,
                    help="also answer with the model alone on the same top passages (the baseline)")
    ap.add_argument("--synthetic", type=int, default=None, help="cap on synthetic distractors (default: all)")
    ap.add_argument("--pydocs", type=int, default=100, help="package READMEs used as distractors")
    ap.add_argument("--workdir", type=Path, default=None, help="keep (and reuse) the index here")
    ap.add_argument("--dump", type=Path, default=None, help="write every answer with its scores (JSONL)")
    ap.add_argument("--passage-chars", type=int, default=None,
                    help=f"characters of each passage shown to the model (default: the agent's {rag.PASSAGE_CHARS})")
    ap.add_argument("--rag-system-file", type=Path, default=None,
                    help="replace prompts.RAG_SYSTEM with this file's text (prompt experiments)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    questions = load_questions(args.data)[: args.limit]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sb-wixqa-"))
    try:
        return _run(args, questions, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, questions: list[Question], workdir: Path) -> int:
    index = build_index(workdir, args.data, seed=args.seed, synthetic=args.synthetic, pydocs=args.pydocs,
                        embeddings=args.embeddings)
    print_index(index)
    store = index.store
    if args.min_score is None:
        args.min_score = store.relevance_floor
    if args.margin is None:
        args.margin = store.relevance_margin
    weight = store.lexical_weight
    store.lexical_weight = 0.0  # the dense half alone
    dense = dense_search(store, questions, args.depth)
    dense_latency = time_queries(store, questions, args.k)
    store.lexical_weight = weight
    hybrid = dense_search(store, questions, args.depth)  # what the agent searches with
    agent_latency = time_queries(store, questions, args.k * rag.SCREEN_DEPTH)
    bm25 = bm25_rankings(store, questions, args.depth)
    print_retrieval({
        f"dense ({store.embedder.name}, Chroma)": ranking_metrics(dense.rankings, questions),
        "BM25 (stopwords dropped)": ranking_metrics(bm25, questions),
        "RRF(dense, BM25), k=60": ranking_metrics([rrf(d, b) for d, b in zip(dense.rankings, bm25, strict=True)],
                                                  questions),
        f"hybrid (product, w={weight:g})": ranking_metrics(hybrid.rankings, questions),
    }, len(questions))
    short = sum(len(r) < max(KS) for r in hybrid.rankings)
    if short:
        print(f"note: {short} question(s) had fewer than {max(KS)} distinct articles in {args.depth} chunks")
    print(f"Query latency, embedding included: hybrid as the agent asks (k={args.k * rag.SCREEN_DEPTH}) p50 "
          f"{pct(agent_latency, 50):.1f} ms, p95 {pct(agent_latency, 95):.1f} ms; dense only (k={args.k}) p50 "
          f"{pct(dense_latency, 50):.1f} ms; hybrid k={args.depth} p50 {pct(hybrid.latency_ms, 50):.1f} ms, "
          f"p95 {pct(hybrid.latency_ms, 95):.1f} ms")
    tops = [hits[0].score for hits in hybrid.hits if hits]
    print(f"Top-1 cosine: min {min(tops):.3f}, p5 {pct(tops, 5):.3f}, median {statistics.median(tops):.3f}; "
          f"{sum(t < args.min_score for t in tops)} below the {args.min_score:.2f} threshold")
    print_passages({
        "top chunks (chunks)": passage_stats(hybrid, questions, args.k, "chunks", args.min_score),
        "best chunk per article": passage_stats(hybrid, questions, args.k, "articles", args.min_score),
    }, args.k, args.min_score)

    negatives = load_negatives(args.negatives_file, args.negatives, args.seed)
    print_declines(top_scores(store, [q.question for q in questions], args.k * rag.SCREEN_DEPTH),
                   top_scores(store, negatives, args.k * rag.SCREEN_DEPTH), args.min_score)

    if args.answers > 0:
        _answers(args, questions, store, workdir)
    return 0


def _answers(args: argparse.Namespace, questions: list[Question], store: KnowledgeStore, workdir: Path) -> None:
    model = args.model or default_model()
    if args.rag_system_file is not None:
        prompts.RAG_SYSTEM = args.rag_system_file.read_text(encoding="utf-8").strip()
        print(f"RAG_SYSTEM replaced by {args.rag_system_file}")
    if args.passage_chars is not None:
        rag.PASSAGE_CHARS = args.passage_chars
        print(f"passages cut at {rag.PASSAGE_CHARS} characters")
    sample = random.Random(args.seed).sample(questions, min(args.answers, len(questions)))
    services = make_services(store, workdir, model)
    default_mode = "articles" if RAGAgent(services).per_article else "chunks"
    modes: list[PassageMode] = ["chunks", "articles"] if args.passages == "both" else [args.passages or default_mode]
    runs: dict[str, list[AnswerRecord]] = {}
    started = time.perf_counter()
    if args.alone:
        runs["alone"] = asyncio.run(run_model_alone(services.registry.handle(model, role="alone"), store, sample,
                                                    args.k))
        score_answers(runs["alone"], store)
    for mode in modes:
        agent = RAGAgent(services, top_k=args.k, min_score=args.min_score, per_article=mode == "articles",
                         margin=args.margin)
        runs[mode] = asyncio.run(run_answers(agent, sample, mode))
        score_answers(runs[mode], store)
    print(f"answered {sum(map(len, runs.values()))} in {time.perf_counter() - started:.0f} s")
    print_answers(runs, model)
    for mode in modes if args.alone else []:
        print_gain(runs["alone"], runs[mode], mode)
    if args.dump:
        dump_answers(args.dump, runs)
        print(f"answers written to {args.dump}")


if __name__ == "__main__":
    sys.exit(main())
