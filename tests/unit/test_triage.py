"""Triage: the local classifier routes confidently without an LLM; multi-part turns split;
an unsure clause asks the LLM once; follow-ups lean on the previous turn."""

from __future__ import annotations

import pytest

from agents.triage import Triage
from switchboard.services import Services
from switchboard.settings import Settings
from tests.fakes import ScriptedChatModel
from tools.routing.intent import IntentClassifier, RouteConfig

CONFIG = RouteConfig.load(Settings().routes_file)


@pytest.fixture(scope="module")
def classifier() -> IntentClassifier:
    return IntentClassifier.from_routes(CONFIG)


def make_triage(classifier, reply: str = "rag", threshold: float | None = None, settings: Settings | None = None):
    registry = Services(settings or Settings()).registry
    fake = ScriptedChatModel(respond=lambda msgs: reply)
    registry.use_chat_model("local-qwen2.5-coder-1.5b", fake)
    services = Services(settings or Settings())
    return Triage(CONFIG, classifier, registry, threshold=threshold, profile=services.profile), fake


@pytest.mark.parametrize(
    ("text", "agent"),
    [
        ("How many customers are from Brazil?", "sql"),
        ("What's your refund policy?", "rag"),
        ("Which artist has sold the most tracks?", "sql"),
        ("How long do I have to ask for my money back?", "rag"),
        ("Good morning!", "general"),
    ],
)
async def test_confident_routes_need_no_llm(classifier, text, agent):
    triage, fake = make_triage(classifier)
    decision = await triage.decide(text, has_image=False)
    assert [s.agent for s in decision.subtasks] == [agent]
    assert decision.llm_calls == 0 and fake.calls == []
    assert decision.subtasks[0].scores[decision.subtasks[0].route] >= CONFIG.threshold


async def test_two_part_request_is_split_into_two_specialists(classifier):
    triage, _ = make_triage(classifier)
    decision = await triage.decide(
        "How many customers are from Brazil, and what is your refund policy?", has_image=False
    )
    assert [s.agent for s in decision.subtasks] == ["sql", "rag"]
    assert decision.subtasks[0].task == "How many customers are from Brazil"
    assert decision.subtasks[1].task == "what is your refund policy?"


async def test_conjunction_inside_one_request_is_not_split(classifier):
    triage, _ = make_triage(classifier)
    decision = await triage.decide("How many customers are from Brazil and Germany?", has_image=False)
    assert len(decision.subtasks) == 1 and decision.subtasks[0].agent == "sql"


async def test_unsure_clause_asks_the_llm_once_and_logs_why(classifier, make_settings):
    # threshold 0.999 makes every clause "unsure"; the scripted model answers "rag"
    triage, fake = make_triage(classifier, reply="rag", threshold=0.999, settings=make_settings())
    decision = await triage.decide("Tell me about the store", has_image=False)
    assert decision.llm_calls == 1 and len(fake.calls) == 1
    (s,) = decision.subtasks
    assert s.agent == "rag" and s.llm_asked
    assert "LLM chose rag" in s.reason and "0.999" in s.reason
    assert len(decision.ledger) == 1 and decision.ledger[0].agent == "triage"


async def test_unparseable_llm_label_falls_back_to_general(classifier, make_settings):
    triage, _ = make_triage(classifier, reply="I am not sure, sorry", threshold=0.999, settings=make_settings())
    decision = await triage.decide("Tell me about the store", has_image=False)
    assert decision.subtasks[0].agent == "general"


async def test_follow_up_keeps_previous_route_when_unsure(classifier):
    triage, fake = make_triage(classifier, reply="general", threshold=0.999)
    decision = await triage.decide("and what about them?", has_image=False, previous_agents=["sql"])
    assert decision.subtasks[0].agent == "sql"
    assert "follow-up" in decision.subtasks[0].reason
    assert fake.calls == []


async def test_image_turn_runs_vision_before_sql(classifier):
    triage, _ = make_triage(classifier)
    decision = await triage.decide("Check this receipt against our records", has_image=True)
    agents = [(s.agent, s.depends_on) for s in decision.subtasks]
    assert agents == [("vision", []), ("sql", ["t1"])]


async def test_image_with_unrelated_text_still_gets_vision(classifier):
    triage, _ = make_triage(classifier)
    decision = await triage.decide("What's your refund policy?", has_image=True)
    assert decision.subtasks[0].agent == "vision"
    assert "image is attached" in decision.subtasks[0].reason
    assert [s.agent for s in decision.subtasks] == ["vision", "rag"]


@pytest.mark.parametrize(
    ("text", "agents", "tasks"),
    [  # the generalist answers a turn's small talk once, in one part
        ("Hello! What can you help me with?", ["general"], ["Hello! What can you help me with?"]),
        # a greeting beside a real request is not a part of its own
        ("Hi! How many customers are from Brazil?", ["sql"], ["How many customers are from Brazil?"]),
        ("Thanks! What is your refund policy?", ["rag"], ["What is your refund policy?"]),
    ],
)
async def test_small_talk_is_one_part_and_greetings_beside_a_request_are_dropped(classifier, text, agents, tasks):
    triage, fake = make_triage(classifier)
    decision = await triage.decide(text, has_image=False)
    assert [s.agent for s in decision.subtasks] == agents
    assert [s.task for s in decision.subtasks] == tasks
    assert [s.id for s in decision.subtasks] == [f"t{i + 1}" for i in range(len(agents))]


async def test_without_an_image_no_image_route_is_chosen(classifier):
    """Neither the classifier nor the LLM may send a clause to vision when no image is attached:
    the vision specialist could only say "no image is attached"."""
    triage, fake = make_triage(classifier, reply="vision", threshold=0.999)  # unsure; the LLM says vision
    decision = await triage.decide("What does the chart show about sales?", has_image=False)
    assert decision.llm_calls == 1 and [s.agent for s in decision.subtasks] == ["general"]
    assert "vision" not in str(fake.calls[0][0].content)  # the LLM was not offered the image routes
    assert "vision" in triage.candidates(has_image=True) and "vision:" in triage.route_list(has_image=True)


@pytest.mark.parametrize(("text", "agents"), [
    ("What's the total on this?", ["vision"]),  # the only thing said beside an image is about it
    # two sentences about one image: it is read once, and checked against the records once
    ("Is this invoice one of yours? Please check it against your database", ["vision", "sql"]),
    # a policy question beside the image is not lost
    ("What's the total on this receipt, and what is your refund policy?", ["vision", "rag"]),
])
async def test_an_image_turn_reads_the_image_once_and_keeps_the_other_questions(classifier, text, agents):
    triage, _ = make_triage(classifier, reply="records_check")  # what an unsure sentence about the image gets
    decision = await triage.decide(text, has_image=True)
    assert [s.agent for s in decision.subtasks] == agents
    assert sum(s.agent == "vision" for s in decision.subtasks) == 1


async def test_an_unsure_half_of_a_two_part_sentence_is_split_not_dropped(make_settings):
    """One half sure (refunds: rag), the other only plausible (the classifier as it runs: trained on
    the routes file and on examples generated from the demo database and help center): both are
    answered, the unsure half resolved like any unsure clause (here the LLM says sql)."""
    services = Services(make_settings())
    fake = ScriptedChatModel(respond=lambda msgs: "sql")
    services.registry.use_chat_model("local-qwen2.5-coder-1.5b", fake)
    triage = services.triage
    decision = await triage.decide("how many tracks did Iron Maiden release with us, and how do refunds work "
                                   "for albums?", has_image=False)
    assert [s.agent for s in decision.subtasks] == ["sql", "rag"]


@pytest.mark.parametrize("routes", [None, 2])
def test_the_classifier_scores_as_scikit_learn_does(classifier, routes):
    """``IntentClassifier`` computes ``predict_proba`` itself (scikit-learn's call costs more than
    the arithmetic): same probabilities for the product's routes and for a two-route model."""
    import numpy as np

    questions = ["How many customers are from Brazil?", "What is your refund policy?", "hi", "Tell me a joke"]
    model = classifier
    if routes == 2:  # scikit-learn keeps one row of weights for two classes: the sigmoid branch
        texts = [t for r in list(CONFIG.routes.values())[:2] for t in r.examples]
        labels = [r.name for r in list(CONFIG.routes.values())[:2] for _ in r.examples]
        model = IntentClassifier().fit(texts, labels)
    X = model.embedder.embed(questions)
    expected = model._clf.predict_proba(X)
    got = model.predict_vectors(X)
    assert len(model.labels) == (2 if routes == 2 else len(CONFIG.routes))
    for row, p in zip(expected, got, strict=True):
        assert p.label == model.labels[int(np.argmax(row))]
        assert p.confidence == pytest.approx(float(row.max()), abs=1e-6)  # float32 embeddings
        assert p.scores == pytest.approx({lab: float(v) for lab, v in zip(model.labels, row, strict=True)}, abs=1e-4)


async def test_a_new_question_is_embedded_off_the_event_loop_and_a_repeated_one_on_it(classifier, monkeypatch):
    """Embedding a new question takes ONNX Runtime a few ms: on a worker thread, the event loop
    serves other conversations meanwhile. A question whose vectors are remembered costs a lookup."""
    import threading
    import uuid

    triage, _ = make_triage(classifier)
    on_loop: list[bool] = []
    predict = classifier.predict

    def spy(texts):  # noqa: ANN001, ANN202
        on_loop.append(threading.current_thread() is threading.main_thread())
        return predict(texts)

    monkeypatch.setattr(classifier, "predict", spy)
    question = f"How many customers are from Brazil, order {uuid.uuid4().hex[:8]}?"
    first = await triage.decide(question, has_image=False)
    assert on_loop and not any(on_loop)
    on_loop.clear()
    again = await triage.decide(question, has_image=False)
    assert on_loop and all(on_loop)
    assert [s.agent for s in first.subtasks] == [s.agent for s in again.subtasks] == ["sql"]
