"""The knowledge-base specialist: retrieve help-center passages, answer only from them, cite.

If nothing relevant is retrieved it says so, without calling a model at all.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage

from agents import prompts
from agents.base import context_block, specialist
from agents.triage import looks_like_follow_up
from graphs.state import Handoff
from switchboard.services import Services
from tools.models import call_model

TOP_K = 3
MIN_SCORE = 0.30  # below this the best passage is unrelated (measured on the demo help center)
PASSAGE_CHARS = 450


class RAGAgent:
    def __init__(self, services: Services, top_k: int = TOP_K, min_score: float = MIN_SCORE) -> None:
        self.services = services
        self.top_k = top_k
        self.min_score = min_score

    async def __call__(self, handoff: Handoff) -> dict[str, Any]:
        async with specialist("rag", handoff) as out:
            question = out.subtask["task"]
            query = question
            if looks_like_follow_up(question) and handoff.get("summary"):
                # fold the shared context into the query: "and for albums?" needs the last topic
                query = f"{handoff['summary'].splitlines()[-1]} {question}"
            hits = self.services.kb.search(query, k=self.top_k)
            out.evidence["retrieved"] = [
                {"title": h.title, "source": h.source, "url": h.url, "score": round(h.score, 3)} for h in hits
            ]
            relevant = [h for h in hits if h.score >= self.min_score]
            if not relevant:
                out.answer = (
                    "I could not find anything about this in the help center, so I won't guess. "
                    "You can ask our support team directly."
                )
                out.evidence["citations"] = []
                return out.update()
            passages = "\n".join(
                f"[{i}] {h.title}: {_squash(h.text)[:PASSAGE_CHARS]}" for i, h in enumerate(relevant, 1)
            )
            handle = self.services.registry.for_agent("rag", handoff["policy"])
            msgs = [
                SystemMessage(prompts.RAG_SYSTEM),
                HumanMessage(prompts.RAG_USER.format(passages=passages, context=context_block(handoff), question=question)),
            ]
            reply, entry = await call_model(
                handle, msgs, agent="rag", task=question, max_tokens=160, subtask_id=out.subtask["id"]
            )
            out.ledger.append(entry)
            text = attribute(str(reply.content).strip(), [h.text for h in relevant], self.services)
            cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", text) if 0 < int(n) <= len(relevant)})
            out.evidence["model"] = handle.spec.name
            out.evidence["citations"] = [
                {"n": n, "title": relevant[n - 1].title, "url": relevant[n - 1].url or relevant[n - 1].source}
                for n in cited
            ]
            if cited:
                sources = "; ".join(f"[{c['n']}] {c['title']} ({c['url']})" for c in out.evidence["citations"])
                out.answer = f"{text}\n\nSources: {sources}"
            else:
                consulted = "; ".join(dict.fromkeys(f"{h.title} ({h.url or h.source})" for h in relevant))
                out.answer = f"{text}\n\n(Not traced to a passage; consulted: {consulted})"
        return out.update()


_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\[])")
ATTRIBUTION_MIN = 0.45  # cosine between a sentence and a passage to count as "comes from"


def attribute(answer: str, passages: list[str], services: Services) -> str:
    """Give each uncited sentence the passage it most resembles, when it clearly comes from one.

    Small models often forget the [n] markers; embeddings (milliseconds) restore them, and a
    sentence that matches no passage stays uncited rather than getting a made-up source.
    """
    sentences = [s for s in _SENT.split(answer) if s.strip()]
    todo = [i for i, s in enumerate(sentences) if not re.search(r"\[\d+\]", s) and len(s.split()) >= 4]
    if not todo or not passages:
        return answer
    emb = services.embedder
    sims = emb.embed([sentences[i] for i in todo]) @ emb.embed(passages).T
    for row, i in zip(sims, todo, strict=True):
        best = int(row.argmax())
        if row[best] >= ATTRIBUTION_MIN:
            s = sentences[i].rstrip()
            end = s[-1] if s[-1] in ".!?" else ""
            sentences[i] = f"{s[: len(s) - len(end)]} [{best + 1}]{end}"
    return " ".join(sentences)


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
