"""Synthesis joins parts without an LLM; the conversation summary stays bounded."""

from __future__ import annotations

from graphs.synthesis import compose, remember


def _result(sid, agent, task, answer, ok=True, evidence=None, entities=None):
    return {"subtask_id": sid, "agent": agent, "task": task, "ok": ok, "answer": answer,
            "error": None, "evidence": evidence or {}, "entities": entities or {}}


def test_single_part_answer_is_passed_through_unchanged():
    subtasks = [{"id": "t1"}]
    assert compose(subtasks, [_result("t1", "sql", "q", "There are 5 customers.")]) == "There are 5 customers."


def test_multi_part_answer_keeps_the_order_of_the_request():
    subtasks = [{"id": "t1"}, {"id": "t2"}]
    # results arrive in completion order, not request order
    results = [_result("t2", "rag", "refund policy", "14 days."), _result("t1", "sql", "customers in Brazil", "5.")]
    text = compose(subtasks, results)
    assert text.index("**Customers in Brazil?**") < text.index("**Refund policy?**")
    assert "5." in text and "14 days." in text


def test_summary_is_bounded_and_keeps_the_newest_turns():
    state = {"turns": [], "summary": "", "entities": {}}
    for i in range(40):
        state.update({"question": f"question number {i} about customers", "answer": f"answer {i} " + "x" * 80,
                      "results": [_result("t1", "sql", "q", "a", evidence={"sql": f"SELECT {i}"},
                                          entities={"customer": f"C{i}"})]})
        state.update(remember(state, max_chars=600))
    assert len(state["summary"]) <= 600
    assert "question number 39" in state["summary"] and "question number 0 " not in state["summary"]
    assert state["summary"].startswith(f"({state['omitted_turns']} earlier turns omitted)")
    assert state["omitted_turns"] + len(state["turns"]) == 40
    assert state["entities"]["customer"] == "C39"
    assert "SELECT 39" in state["summary"]
