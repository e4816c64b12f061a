"""The knowledge-base specialist around the model: when it calls one, and what it does with the reply.

A scripted fake model answers, so these tests pin our logic (threshold, citation restoring and
numbering, sources) rather than model output. Retrieval is real: a temporary Chroma with three
small articles ingested through ``knowledge.ingest`` and the offline MiniLM embeddings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from agents.rag import NOT_FOUND, RAGAgent, attribute, search_query
from knowledge.ingest import ingest
from knowledge.store import KnowledgeStore
from switchboard.services import Services
from tests.fakes import ScriptedChatModel

LOCAL = "local-qwen2.5-coder-1.5b"
REFUNDS_URL = "https://help.test.example/articles/refunds"

ARTICLES = {
    "refunds.md": f"""---
title: Refund policy
url: {REFUNDS_URL}
---
# Refund policy

## The 14-day refund window

You can request a full refund within 14 days of the purchase date for any track or album that
you have not downloaded yet. Once a file has been downloaded, the purchase is final, because a
download cannot be returned. Faulty files are the only exception to this rule.

## How to request a refund

Sign in and open Order history, select the order and choose Request refund, then tick the
items you want refunded. We review refund requests within 5 business days and approved refunds
go back to the original payment method.
""",
    "gift-cards.md": """---
title: Gift cards
url: https://help.test.example/articles/gift-cards
---
# Gift cards

Gift cards are sold in amounts from 10 to 100 US dollars and never expire. Redeem a gift card
under Account > Redeem; the balance is used before your card is charged. Gift cards cannot be
exchanged for cash and a redeemed gift card cannot be refunded.
""",
    "support-hours.md": """---
title: Support hours
url: https://help.test.example/articles/support-hours
---
# Support hours

Our support team answers chat and email from 09:00 to 18:00 Central European Time, Monday to
Friday. Messages sent at the weekend are answered on the next working day.
""",
}


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeStore:
    folder = tmp_path_factory.mktemp("articles")
    for name, text in ARTICLES.items():
        (folder / name).write_text(text, encoding="utf-8")
    store = KnowledgeStore.open(chroma_dir=tmp_path_factory.mktemp("chroma"), name="rag-agent-test")
    # small chunks: each refund section is its own chunk, so one article yields two passages
    report = ingest([folder], store, chunk_size=400, chunk_overlap=0, progress=False)
    assert report.added == len(ARTICLES) and not report.skipped
    assert store.source_info(str(folder / "refunds.md")).chunks == 2
    return store


Reply = Callable[[list[BaseMessage]], str]


def make_agent(make_settings, kb: KnowledgeStore, reply: str | Reply, **kwargs: Any) -> tuple[RAGAgent, ScriptedChatModel]:
    services = Services(make_settings())
    services.__dict__["kb"] = kb  # cached_property: use the test store, not the demo collection
    fake = ScriptedChatModel(respond=reply if callable(reply) else (lambda _messages: reply))
    services.registry.use_chat_model(LOCAL, fake)
    return RAGAgent(services, **kwargs), fake


def handoff(question: str, summary: str = "") -> dict[str, Any]:
    subtask = {"id": "t1", "agent": "rag", "task": question, "route": "policy", "confidence": 1.0,
               "scores": {}, "reason": "test", "depends_on": [], "extract_only": False}
    return {"subtask": subtask, "summary": summary, "entities": {}, "evidence": [], "image_path": None,
            "policy": "balanced"}


async def ask(agent: RAGAgent, question: str) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    update = await agent(handoff(question))  # type: ignore[arg-type]
    (result,) = update["results"]
    assert result["ok"], result["error"]
    return result["answer"], result["evidence"], update["ledger"]


def passage_numbers(messages: list[BaseMessage], title: str) -> list[int]:
    """Numbers of the passages with ``title`` in the prompt the fake model received."""
    return [int(n) for n in re.findall(rf"^\[(\d+)\] {re.escape(title)}:", str(messages[-1].content), re.M)]


async def test_nothing_relevant_says_so_and_calls_no_model(make_settings, kb: KnowledgeStore) -> None:
    agent, fake = make_agent(make_settings, kb, "should never be used")
    answer, evidence, ledger = await ask(agent, "How do I bake sourdough bread?")
    assert answer == NOT_FOUND
    assert fake.calls == [] and ledger == []
    assert evidence["citations"] == []
    assert evidence["retrieved"] and all(r["score"] < agent.min_score for r in evidence["retrieved"])


async def test_uncited_sentence_gets_its_passage_and_the_sources_line(make_settings, kb: KnowledgeStore) -> None:
    reply = "You can get a full refund within 14 days of the purchase date if you have not downloaded the album."
    agent, fake = make_agent(make_settings, kb, reply)
    answer, evidence, ledger = await ask(agent, "Can I get my money back for an album?")
    assert len(fake.calls) == 1 and len(ledger) == 1
    assert answer.startswith("You can get a full refund within 14 days of the purchase date if you have not "
                             "downloaded the album [1].")
    assert answer.endswith(f"\n\nSources: [1] Refund policy ({REFUNDS_URL})")
    (citation,) = evidence["citations"]
    assert citation["title"] == "Refund policy" and citation["url"] == REFUNDS_URL
    assert citation["source"].endswith("refunds.md")


async def test_a_cited_number_beyond_the_passages_is_dropped(make_settings, kb: KnowledgeStore) -> None:
    reply = "Refunds are possible within 14 days [1]. Gift cards are also accepted at partner shops [7]."
    agent, _ = make_agent(make_settings, kb, reply)
    answer, evidence, _ = await ask(agent, "What's your refund policy?")
    assert "[7]" not in answer
    assert "Gift cards are also accepted at partner shops." in answer  # the sentence stays, uncited
    assert [c["n"] for c in evidence["citations"]] == [1]
    assert answer.count("Sources:") == 1 and "Sources: [1] Refund policy" in answer


async def test_only_invalid_numbers_means_not_traced(make_settings, kb: KnowledgeStore) -> None:
    agent, _ = make_agent(make_settings, kb, "Ask our partner shop [9].")
    answer, evidence, _ = await ask(agent, "What's your refund policy?")
    assert evidence["citations"] == []
    assert answer.startswith("Ask our partner shop.\n\n(Not traced to a passage; consulted: Refund policy (")


async def test_two_chunks_of_one_article_are_one_source(make_settings, kb: KnowledgeStore) -> None:
    def cite_every_refund_passage(messages: list[BaseMessage]) -> str:
        numbers = passage_numbers(messages, "Refund policy")
        return " ".join(f"Refund detail number {i} is here [{n}]." for i, n in enumerate(numbers, 1))

    agent, fake = make_agent(make_settings, kb, cite_every_refund_passage)
    answer, evidence, _ = await ask(agent, "How do I request a refund, and within how many days?")
    cited = passage_numbers(fake.calls[0], "Refund policy")
    assert len(cited) == 2, "precondition: both refund chunks were retrieved"
    (citation,) = evidence["citations"]
    assert citation["n"] == 1 and citation["passages"] == cited
    assert re.findall(r"\[\d+\]", answer.split("\n\nSources:")[0]) == ["[1]", "[1]"]
    assert answer.endswith(f"Sources: [1] Refund policy ({REFUNDS_URL})")


async def test_per_article_gives_the_model_distinct_articles(make_settings, kb: KnowledgeStore) -> None:
    agent, fake = make_agent(make_settings, kb, "Refunds within 14 days [1].", per_article=True, min_score=-1.0)
    _, evidence, _ = await ask(agent, "How do I request a refund, and within how many days?")
    sources = [r["source"] for r in evidence["retrieved"]]
    assert len(sources) == 3 and len(set(sources)) == 3
    assert len(passage_numbers(fake.calls[0], "Refund policy")) == 1


def test_restored_citations_keep_a_numbered_list_intact(make_settings, kb: KnowledgeStore) -> None:
    services = Services(make_settings())
    passage = next(h.text for h in kb.search("how to request a refund", k=3) if "Order history" in h.text)
    answer = ("Here is how:\n1. Sign in and open Order history, select the order and choose Request refund.\n"
              "2. We review refund requests within 5 business days.")
    out = attribute(answer, [passage], services)
    assert out == ("Here is how:\n1. Sign in and open Order history, select the order and choose Request refund [1].\n"
                   "2. We review refund requests within 5 business days [1].")


def test_follow_up_questions_carry_the_last_turn_into_the_search() -> None:
    summary = "User: what's your refund policy? | rag: 14 days"
    assert search_query(handoff("and for albums?", summary), "and for albums?").startswith(summary)
    assert search_query(handoff("What are your support hours?", summary), "What are your support hours?") == (
        "What are your support hours?"
    )
