"""The knowledge-base specialist: retrieve help-center passages, answer only from them, cite.

Retrieval is hybrid (MiniLM vectors fused with BM25, ``knowledge.lexical``). Whether the help
center covers a question is decided by retrieval scores alone: if no passage's cosine reaches
``min_score`` the answer says so without calling a model; otherwise the model is not asked to
judge (a small model declined half the WixQA questions whose article it had been given). The
answer starts with the sentence of the top passage that best matches the question, quoted and
cited (:func:`lead_sentence`, sent before the model has read its prompt), then the model's short
answer; a model sentence saying the passages do not cover it is dropped after such a lead.

A follow-up ("and for albums?") is searched with the last turn folded in, and alone; the search
whose best passage scores higher wins, so "Also, what payment methods do you accept?" after an
unrelated turn is not diluted by it.

Citations are
per *article*: the model cites passages ``[1]..[k]``; the answer the customer sees numbers the
articles those passages come from, so two chunks of one article are one source.

Knowledge-base text is data, not instructions. Passages reach the model between ``<passages>``
tags under a rule saying nothing in them can change its rules or the store's policy; a document
holding instruction-like text ("ignore previous instructions", ``knowledge.screening``) is left
out of the prompt entirely (recorded as ``quarantined``), and passages from the configured help
center (the curated source) come before other ingested documents.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.messages import HumanMessage, SystemMessage

from agents import prompts
from agents.base import context_block, specialist
from agents.contract import Evidence, Handoff
from agents.deps import AgentServices
from agents.followup import looks_like_follow_up
from agents.streaming import PartStream
from knowledge.screening import instruction_like
from knowledge.store import Hit
from tools.models.gateway import call_model

log = logging.getLogger("switchboard.agents")

TOP_K = 3
SCREEN_DEPTH = 2  # search top_k times this many, so quarantined passages are replaced by the next ones
PASSAGE_CHARS = 450
PER_ARTICLE = False
"""Give the model the best chunk of ``TOP_K`` different articles (True) or the ``TOP_K`` best chunks.

Measured with bench/rag_wixqa.py (160 WixQA questions, 457 documents): one chunk per article
puts a gold article among the 3 passages for 92.5% of questions instead of 90.6%, but on 40
answers from the local model the scores moved within noise (token F1 +0.024, bootstrap 95% CI
-0.002..+0.054; citation correctness -0.025). Not worth changing the recorded conversations for;
the option stays so it can be measured again with a larger model (``--passages both``)."""
NOT_FOUND = (
    "I could not find anything about this in the help center, so I won't guess. "
    "You can ask our support team directly."
)


class RAGEvidence(Evidence, total=False):
    """What the help-center specialist retrieved and cited."""

    retrieved: list[dict[str, Any]]  # title, source, url, score of each passage retrieved
    quarantined: list[dict[str, Any]]  # passages left out for instruction-like text, with the reason
    citations: list[dict[str, Any]]
    passages: str  # the passages as the model saw them (what a validator checks against)
    lead: str  # the sentence quoted from the top passage that the answer starts with ("" if none)


class RAGAgent:
    """Answers from ``top_k`` retrieved passages scoring at least ``min_score`` and within
    ``margin`` of the best one's relevance.

    ``per_article=True`` gives the model the best chunk of ``top_k`` different articles
    instead of the ``top_k`` best chunks (which may all come from one article).
    """

    name: ClassVar[str] = "rag"
    title: ClassVar[str] = "Knowledge base"  # the chat UI's step
    label: ClassVar[str] = "From the help center"  # introduces its part of a combined answer

    def __init__(
        self, services: AgentServices, top_k: int = TOP_K, min_score: float | None = None,
        per_article: bool = PER_ARTICLE, margin: float | None = None,
    ) -> None:
        self.services = services
        self.top_k = top_k
        self.min_score = min_score
        self.per_article = per_article
        self.margin = margin

    @staticmethod
    def checkable(evidence: RAGEvidence) -> tuple[str, str] | None:
        """What a validator checks this answer against: the passages the model was shown."""
        return ("the help-center articles", evidence["passages"]) if evidence.get("passages") else None

    async def __call__(self, handoff: Handoff) -> dict[str, Any]:
        async with specialist(self.name, handoff, RAGEvidence()) as out:
            question = out.subtask["task"]
            # off the event loop: embedding + Chroma are blocking, and other conversations' turns wait on it
            found = await asyncio.to_thread(self._search, handoff, question)
            hits, quarantined = screen(found)
            hits = hits[: self.top_k]
            if quarantined:
                log.warning("rag: left out %d passage(s) of documents with instruction-like text: %s",
                            len(quarantined), "; ".join(sorted({h.source for h in quarantined})))
                out.evidence["quarantined"] = [
                    {"title": h.title, "source": h.source, "reason": h.flagged or instruction_like(h.text)}
                    for h in quarantined
                ]
            out.evidence["retrieved"] = [
                {"title": h.title, "source": h.source, "url": h.url, "score": round(h.score, 3)} for h in hits
            ]
            kb = self.services.kb  # None: the embedding model's floor and margin (``Embedder``)
            floor = kb.relevance_floor if self.min_score is None else self.min_score
            margin = kb.relevance_margin if self.margin is None else self.margin
            relevant = curated_first(close_to_best([h for h in hits if h.score >= floor], margin),
                                     self.services.agent_config.helpcenter_dir)
            if not relevant:
                out.answer = NOT_FOUND
                out.evidence["citations"] = []
                return out.update()
            handle, tier = self.services.registry.route("rag", handoff["policy"], task=question)
            out.evidence["tier"] = tier.as_dict()
            msgs = [
                SystemMessage(prompts.RAG_SYSTEM.format(**self.services.agent_config.profile.prompt_values())),
                HumanMessage(
                    prompts.RAG_USER.format(
                        passages=format_passages(relevant), context=context_block(handoff), question=question
                    )
                ),
            ]
            passages = [h.text for h in relevant]
            lead = await asyncio.to_thread(lead_sentence, question, relevant[0], self.services)
            out.evidence["lead"] = lead

            def answer_text(text: str) -> str:  # the model's text as the answer has it, markers per passage
                return with_lead(lead, attribute(text.strip(), passages, self.services))

            def finished_text(text: str) -> str:  # what the answer's text will be (before its Sources line)
                return cite_articles(answer_text(text), relevant)[0]

            reply, entry = await call_model(
                handle, msgs, agent="rag", task=question, max_tokens=160, subtask_id=out.subtask["id"],
                answer=PartStream(out.subtask["id"], self.name, finished_text, blocking=True,
                                  lead=cite_articles(lead, relevant)[0]),
            )
            out.ledger.append(entry)
            text = await asyncio.to_thread(answer_text, str(reply.content))  # embeddings: off the event loop
            text, citations = cite_articles(text, relevant)
            out.evidence["model"] = handle.spec.name
            out.evidence["citations"] = citations
            out.evidence["passages"] = format_passages(relevant)  # what a validator checks against
            out.answer = with_sources(text, citations, relevant)
        return out.update()


    def _search(self, handoff: Handoff, question: str) -> list[Hit]:
        """The question's passages; a follow-up's from the better of two searches (see the module doc)."""
        def search(query: str) -> list[Hit]:
            return self.services.kb.search(query, k=self.top_k * SCREEN_DEPTH, per_source=self.per_article)

        alone = search(question)
        query = search_query(handoff, question)
        if query == question:
            return alone
        folded = search(query)
        return max(folded, alone, key=lambda hits: hits[0].score if hits else -1.0)  # ties: the folded search


def search_query(handoff: Handoff, question: str) -> str:
    """Fold the last turn into an elliptical follow-up ("and for albums?" needs the topic)."""
    if looks_like_follow_up(question) and handoff.get("summary"):
        return f"{handoff['summary'].splitlines()[-1]} {question}"
    return question


LEAD_MIN_WORDS = 5
LEAD_MAX_WORDS = 60
LEAD_MIN_SCORE = 0.25  # cosine of the sentence to the question; below it no sentence is quoted
_SENTENCE = re.compile(r"(?<=[.!?])[ \t]+(?=[A-Z\[\"“(])")
_LIST_MARK = re.compile(r"^\s*(?:[-*+>]|#{1,6}|\d{1,2}[.)])\s+")
DECLINE = re.compile(
    r"\b(?:could not|couldn't|cannot|can't|unable to|did not|didn't) find\b[^.]*\b(?:help[- ]?cent(?:er|re)|passages?)\b"
    r"|\bpassages? (?:do|does) not (?:contain|mention|say|cover|provide|include)\b"
    r"|\b(?:is|are) not (?:mentioned|covered|included) in the (?:passages?|help[- ]?cent(?:er|re))\b",
    re.IGNORECASE,
)
"""A model sentence saying the passages do not answer (the wording the local model uses)."""


def _blocks(text: str) -> list[str]:
    """A passage's paragraphs, headings and list items, with hard-wrapped lines joined."""
    out: list[str] = []
    for paragraph in re.split(r"\n[ \t]*\n", text):
        for line in paragraph.splitlines():
            joins = out and out[-1] and not out[-1].startswith("#") and not _LIST_MARK.match(line)
            if joins and line.strip():
                out[-1] += " " + line.strip()
            else:
                out.append(line.strip())
        out.append("")
    return [b for b in out if b]


def passage_sentences(text: str) -> list[str]:
    """The sentences of a passage worth quoting: list markers and headings stripped, 5-60 words."""
    out = []
    blocks = [b for b in _blocks(text) if not b.startswith("#")]
    for part in (p for b in blocks for p in _SENTENCE.split(_LIST_MARK.sub("", b))):
        sentence = _squash(part)
        words = len(sentence.split())
        if LEAD_MIN_WORDS <= words <= LEAD_MAX_WORDS and not sentence.endswith(":"):
            out.append(sentence if sentence[-1] in ".!?" else sentence + ".")
    return out


def lead_sentence(question: str, top: Hit, services: AgentServices) -> str:
    """The top passage's sentence most like the question, marked ``[1]``; "" when none is close enough."""
    sentences = passage_sentences(top.text)
    if not sentences:
        return ""
    emb = services.embedder
    sims = emb.embed(sentences) @ emb.embed([question])[0]
    best = int(sims.argmax())
    return _append_marker(sentences[best], 1) if sims[best] >= LEAD_MIN_SCORE else ""


def with_lead(lead: str, answer: str) -> str:
    """The lead, then the model's answer without a sentence saying the passages do not cover it."""
    if not lead:
        return answer
    parts = _SEGMENT.split(answer)
    kept = "".join(p for i, p in enumerate(parts) if i % 2 or not DECLINE.search(p)).strip()
    return f"{lead}\n\n{kept}" if kept else lead


def close_to_best(hits: list[Hit], margin: float) -> list[Hit]:
    """The hits within ``margin`` of the best one's relevance (see ``Embedder.relevance_margin``)."""
    if not hits:
        return []
    best = max(h.relevance for h in hits)
    return [h for h in hits if h.relevance >= best - margin]


def screen(hits: list[Hit]) -> tuple[list[Hit], list[Hit]]:
    """(kept, quarantined): every passage of a document with instruction-like text is left out,
    whether ingestion flagged the document or the retrieved passage itself shows it."""
    bad = {h.source for h in hits if h.flagged or instruction_like(f"{h.title}\n{h.text}")}
    return [h for h in hits if h.source not in bad], [h for h in hits if h.source in bad]


def curated_first(hits: list[Hit], helpcenter_dir: Path | None) -> list[Hit]:
    """Passages of the configured help center first, each group in rank order: when an ingested
    document contradicts the curated one, the curated passage is the one numbered [1]."""
    if helpcenter_dir is None:
        return hits
    root = str(Path(helpcenter_dir).absolute())
    return sorted(hits, key=lambda h: not h.source.startswith(root.rstrip("/") + "/"))


_DELIMITER = re.compile(r"</?\s*passages?\s*>", re.IGNORECASE)


def format_passages(hits: list[Hit]) -> str:
    """Numbered, whitespace-squashed, truncated passages: the prompt's ``{passages}`` (which the
    prompt puts between ``<passages>`` tags; a tag inside a passage is defused so it cannot close them)."""
    return "\n".join(
        f"[{i}] {_DELIMITER.sub('(passage)', h.title)}: {_DELIMITER.sub('(passage)', _squash(h.text))[:PASSAGE_CHARS]}"
        for i, h in enumerate(hits, 1)
    )


def source_ref(hit: Hit) -> str:
    """What a citation shows: the article's URL, else its file name (``refunds.md``, or
    ``faq.jsonl#12`` for a record), never the server's path to it."""
    return hit.url or file_ref(hit.source)


_MARKER = re.compile(r"\[(\d+)\]")
_REPEATED = re.compile(r"(\[\d+\])(?:\s*\1)+")


def cite_articles(text: str, passages: list[Hit]) -> tuple[str, list[dict[str, Any]]]:
    """Renumber passage markers to one number per article, in order of first citation.

    A marker beyond the passages is removed (it points at nothing the customer can check);
    ``[1] [2]`` on two chunks of one article becomes a single ``[1]``. Returns the text and
    one citation per article: ``n``, ``title``, ``url`` (the file name when there is no URL, see
    :func:`source_ref`), ``source`` (the same reference) and the cited ``passages``.
    """
    numbers: dict[str, int] = {}
    citations: list[dict[str, Any]] = []

    def renumber(match: re.Match[str]) -> str:
        n = int(match.group(1))
        if not 0 < n <= len(passages):
            return ""
        hit = passages[n - 1]
        if hit.source not in numbers:
            numbers[hit.source] = len(numbers) + 1
            citations.append(
                {"n": numbers[hit.source], "title": hit.title, "url": source_ref(hit),
                 "source": file_ref(hit.source), "passages": []}
            )
        cite = citations[numbers[hit.source] - 1]
        if n not in cite["passages"]:
            cite["passages"].append(n)
        return f"[{numbers[hit.source]}]"

    text = _MARKER.sub(renumber, text)
    text = _REPEATED.sub(r"\1", text)
    text = re.sub(r"[ \t]+([.,;:!?])", r"\1", re.sub(r"[ \t]{2,}", " ", text)).strip()
    return text, citations


def with_sources(text: str, citations: list[dict[str, Any]], consulted: list[Hit]) -> str:
    """The answer plus a Sources line, or a note naming what was consulted when nothing is cited."""
    if citations:
        return f"{text}\n\nSources: " + "; ".join(f"[{c['n']}] {c['title']} ({c['url']})" for c in citations)
    seen = "; ".join(dict.fromkeys(f"{h.title} ({source_ref(h)})" for h in consulted))
    return f"{text}\n\n(Not traced to a passage; consulted: {seen})"


# Segments are lines, and sentences within a line. "1. Step" at the start of a line is a list
# item, not a sentence end: the lookbehinds keep a one- or two-digit enumerator with its text.
_SEGMENT = re.compile(r"(\n+|(?<=[.!?])(?<!^\d[.!?])(?<!^\d\d[.!?])[ \t]+(?=[A-Z\[]))", re.MULTILINE)
_END = ".!?:"
ATTRIBUTION_MIN = 0.45  # cosine between a sentence and a passage to count as "comes from"


def attribute(answer: str, passages: list[str], services: AgentServices) -> str:
    """Give each uncited sentence the passage it most resembles, when it clearly comes from one.

    Small models often forget the [n] markers; embeddings (milliseconds) restore them, and a
    sentence that matches no passage stays uncited rather than getting a made-up source. Line
    breaks are kept, so numbered steps stay a list.
    """
    parts = _SEGMENT.split(answer)  # even indexes: text; odd: the separators, kept verbatim
    todo = [i for i in range(0, len(parts), 2) if not _MARKER.search(parts[i]) and len(parts[i].split()) >= 4]
    if not todo or not passages:
        return answer
    emb = services.embedder
    sims = emb.embed([parts[i] for i in todo]) @ emb.embed(passages).T
    for row, i in zip(sims, todo, strict=True):
        best = int(row.argmax())
        if row[best] >= ATTRIBUTION_MIN:
            parts[i] = _append_marker(parts[i], best + 1)
    return "".join(parts)


def _append_marker(sentence: str, n: int) -> str:
    """``"Refunds take 5 days."`` -> ``"Refunds take 5 days [n]."`` (marker before the end mark)."""
    s = sentence.rstrip()
    end = s[-1] if s[-1] in _END else ""
    return f"{s[: len(s) - len(end)]} [{n}]{end}{sentence[len(s):]}"


def file_ref(source: str) -> str:
    """A source as citations name it: ``/srv/kb/faq.jsonl#12`` -> ``faq.jsonl#12``."""
    path, sep, record = source.partition("#")
    return f"{Path(path).name}{sep}{record}"


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
