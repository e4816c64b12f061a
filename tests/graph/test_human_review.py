"""Human review: a turn pauses (LangGraph ``interrupt``) before a SQL query that reads sensitive
columns or a heavy-tier call past the review cost, and resumes with approve / edit / reject --
through the Python API, the CLI, and after a restart -- with scripted fake models."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import is_invalid_resume
from langgraph.types import Command
from pydantic import ValidationError

from graphs.support import build_support_graph
from switchboard.api import NoPendingReview, ReviewError, ReviewPending, Switchboard
from switchboard.services import Services
from tests.fakes import ScriptedChatModel, by_system_prompt
from tests.stacks import (
    COUNT_REPLY,
    EMAIL,
    PHONE,
    PHONE_Q,
    PHONE_SQL,
    TWO_PART,
    board,
    phone_reply,
    scripted,
    spend,
    tiered,
)
from tools import review
from tools.models.gateway import call_model
from tools.models.registry import current_thread_id
from tools.sql import sensitive
from tools.sql.database import ReadOnlyDatabase

LOCAL = "local-qwen2.5-coder-1.5b"
def calls_for(fake: ScriptedChatModel, phrase: str) -> int:
    return sum(1 for msgs in fake.calls if phrase in str(msgs[0].content))


# --- which queries read sensitive columns --------------------------------------------------------

@pytest.fixture(scope="module")
def chinook_columns(tmp_path_factory) -> dict[str, list[str]]:
    from switchboard.settings import Settings

    return ReadOnlyDatabase.from_url(Settings(data_dir=tmp_path_factory.mktemp("d")).database_url).column_map()


@pytest.mark.parametrize("sql, reads", [
    ("SELECT COUNT(*) FROM Customer", []),
    ("SELECT FirstName, LastName, Country FROM Customer", []),
    ("SELECT email FROM customer WHERE Country = 'Brazil'", ["Customer.Email"]),
    ("SELECT c.Phone FROM Customer AS c", ["Customer.Phone"]),
    ("SELECT COUNT(*) FROM Customer WHERE Email LIKE '%gmail%'", ["Customer.Email"]),  # a filter reads it too
    ("SELECT * FROM Customer", ["Customer.Address", "Customer.Email", "Customer.Fax", "Customer.Phone"]),
    ("SELECT c.* FROM Customer c JOIN Invoice i ON i.CustomerId = c.CustomerId",
     ["Customer.Address", "Customer.Email", "Customer.Fax", "Customer.Phone"]),
    ("SELECT i.* FROM Customer c JOIN Invoice i ON i.CustomerId = c.CustomerId", []),
    ("WITH x AS (SELECT * FROM Customer) SELECT FirstName FROM x",
     ["Customer.Address", "Customer.Email", "Customer.Fax", "Customer.Phone"]),
    ("SELECT FirstName FROM (SELECT FirstName, Phone FROM Customer) t", ["Customer.Phone"]),
    ("SELECT FirstName FROM Customer c WHERE EXISTS (SELECT * FROM Invoice i WHERE i.CustomerId = c.CustomerId)", []),
    ("SELECT e.Email, c.FirstName FROM Customer c JOIN Employee e ON c.SupportRepId = e.EmployeeId",
     ["Employee.Email"]),
    ("SELECT Email FROM Employee UNION SELECT Email FROM Customer", ["Customer.Email", "Employee.Email"]),
    ("SELECT * FROM Invoice WHERE InvoiceId = 98", []),  # the records check of an uploaded invoice
])
def test_sensitive_reads_resolves_columns_stars_and_aliases(chinook_columns, sql, reads):
    from switchboard.settings import Settings

    assert sensitive.sensitive_reads(sql, chinook_columns, Settings().sensitive_columns) == reads


def test_sensitive_entries_are_case_insensitive_and_may_name_a_whole_table(chinook_columns):
    assert sensitive.sensitive_reads("SELECT Name FROM Artist", chinook_columns, ["artist.*"]) == ["Artist.Name"]
    assert sensitive.sensitive_reads("SELECT * FROM Artist", chinook_columns, ["artist.*"]) == ["Artist.ArtistId",
                                                                                            "Artist.Name"]
    assert sensitive.sensitive_reads("SELECT Title FROM album", chinook_columns, ["ALBUM.TITLE", "Nope.X"]) == ["Album.Title"]
    assert sensitive.sensitive_reads("SELECT Email FROM Customer", chinook_columns, []) == []


# --- the resume payload ----------------------------------------------------------------------------

def test_resume_values_carry_what_the_reviewer_saw():
    shown = {"id": "i1", "kind": "sensitive_sql", "sql": "SELECT Phone FROM Customer"}
    assert review.resume_value(shown, "approve") == {"action": "approve", "sql": "SELECT Phone FROM Customer"}
    # an approval is of the query shown; running another one is an edit
    assert review.resume_value(shown, {"action": "approve", "sql": "SELECT * FROM Customer"})["sql"] == shown["sql"]
    assert review.resume_value(shown, {"action": "edit", "sql": "SELECT 1"}) == {"action": "edit", "sql": "SELECT 1"}
    assert review.resume_value(shown, "reject") == {"action": "reject"}
    cost = {"id": "i2", "kind": "cost"}
    assert review.resume_value(cost, {"action": "approve"}) == {"action": "approve"}
    with pytest.raises(ReviewError, match="not a decision for a cost review"):
        review.resume_value(cost, "edit")
    assert review.resume_map([shown, cost], "reject") == {"i1": {"action": "reject"}, "i2": {"action": "reject"}}
    assert review.resume_map([shown, cost], {"i2": "approve"}) == {"i2": {"action": "approve"}}


# --- sensitive SQL: pause, then approve / edit / reject -------------------------------------------

async def test_sensitive_query_pauses_before_it_runs(make_settings):
    sb, fake = board(make_settings())
    turn = await sb.ask(PHONE_Q, thread_id="p")
    assert turn.paused and PHONE not in turn.answer
    [pending] = turn.pending_review
    assert pending["kind"] == "sensitive_sql" and pending["columns"] == ["Customer.Phone"]
    assert pending["sql"] == PHONE_SQL and pending["subtask"]["task"] == PHONE_Q
    assert pending["actions"] == ["approve", "edit", "reject"] and "Customer.Phone" in pending["question"]
    assert pending["id"] and "waiting for a reviewer" in turn.answer
    assert await sb.pending_reviews("p") == turn.pending_review
    json.dumps(turn.as_json())  # the payload is plain JSON
    with pytest.raises(ReviewPending):  # the paused turn must be decided before the next question
        await sb.ask("How many customers do we have?", thread_id="p")


async def test_approve_runs_exactly_the_query_the_reviewer_saw(make_settings):
    """On resume LangGraph re-runs the node, and this model writes a different query the second
    time: what runs is the approved query, not the regenerated one."""
    replies = iter([phone_reply(None), "SQL: SELECT Email FROM Customer WHERE CustomerId = 1\nANSWER: It is {result}."])
    sb, fake = board(make_settings(cache_ttl_s=0), sql=lambda m: next(replies))
    paused = await sb.ask(PHONE_Q, thread_id="a")
    turn = await sb.resume("a", "approve")
    assert not turn.paused
    assert calls_for(fake, "SQLite SELECT") == 2  # the node really re-ran
    [result] = turn.results
    assert result["ok"] and result["evidence"]["sql"] == paused.pending_review[0]["sql"] == PHONE_SQL
    assert PHONE in turn.answer and EMAIL not in turn.answer
    assert result["evidence"]["review"] == {"kind": "sensitive_sql", "columns": ["Customer.Phone"],
                                            "action": "approve", "sql": PHONE_SQL}
    assert await sb.pending_reviews("a") == []


async def test_approve_keeps_the_models_sentence_when_the_query_is_the_same(make_settings):
    sb, _ = board(make_settings(), sql=lambda m: phone_reply(m) if "phone" in str(m[-1].content) else COUNT_REPLY)
    await sb.ask(PHONE_Q, thread_id="s")
    turn = await sb.resume("s", {"action": "approve"})
    assert turn.answer == f"Luís Gonçalves's phone number is {PHONE}."
    # the conversation goes on normally afterwards
    nxt = await sb.ask("How many customers do we have?", thread_id="s")
    assert not nxt.paused


async def test_reject_answers_honestly_and_finishes_the_turn(make_settings):
    sb, _ = board(make_settings())
    await sb.ask(PHONE_Q, thread_id="r")
    turn = await sb.resume("r", "reject")
    assert not turn.paused and PHONE not in turn.answer
    assert turn.answer.startswith("A reviewer declined to run the database query")
    [result] = turn.results
    assert result["ok"] is False and result["error"] == "declined by a reviewer"
    assert "table" not in result["evidence"]  # nothing was read
    [audited] = sb.services.audit.turns(thread="r")  # a finished turn, audited once like any other
    assert audited["answer_id"] == turn.answer_id


async def test_edit_runs_the_edited_query(make_settings):
    sb, _ = board(make_settings())
    await sb.ask(PHONE_Q, thread_id="e")
    edited = "SELECT Email FROM Customer WHERE FirstName = 'Luís'"
    turn = await sb.resume("e", {"action": "edit", "sql": edited})
    [result] = turn.results
    assert result["ok"] and result["evidence"]["sql"] == edited and EMAIL in turn.answer
    assert "phone number is" not in turn.answer  # the model's sentence was for another query
    assert result["evidence"]["attempts"][-1] == {"model": "reviewer", "sql": edited, "error": ""}


@pytest.mark.parametrize("edited, says", [
    ("DELETE FROM Customer WHERE CustomerId = 1", "nothing was changed"),
    ("SELECT Phone FROM Customer; DROP TABLE Customer", "nothing was changed"),
    ("SELECT Fone FROM Customer", "could not run: unknown column 'Fone'"),
])
async def test_an_edit_that_writes_or_fails_is_refused_with_a_clear_answer(make_settings, edited, says):
    sb, fake = board(make_settings())
    await sb.ask(PHONE_Q, thread_id="w")
    turn = await sb.resume("w", {"action": "edit", "sql": edited})
    [result] = turn.results
    assert not turn.paused and result["ok"] is False and says in turn.answer
    assert len(turn.ledger) == 1  # the re-run's one model call: no retry loop over the reviewer's query
    assert turn.ledger[0]["cached"]  # ... answered by the gateway's cache, so the re-run cost nothing
    assert calls_for(fake, "SQLite SELECT") == 1
    assert sb.services.db.run("SELECT COUNT(*) FROM Customer").rows == [(59,)]


async def test_bad_decisions_are_refused_and_the_review_stays_pending(make_settings):
    sb, _ = board(make_settings())
    await sb.ask(PHONE_Q, thread_id="b")
    for bad in ("maybe", {"action": "edit"}, {"action": "edit", "sql": "  "}):
        with pytest.raises(ReviewError):
            await sb.resume("b", bad)
    with pytest.raises(ReviewError, match="no pending review"):
        await sb.resume("b", "approve", interrupt_id="0" * 32)
    # a raw LangGraph client gets the interrupt's response_schema validation: nothing is saved
    [pending] = await sb.pending_reviews("b")
    config = {"configurable": {"thread_id": "b"}}
    with pytest.raises(ValidationError) as info:
        await sb.graph.ainvoke(Command(resume={pending["id"]: {"action": "approve"}}), config)
    assert is_invalid_resume(info.value)
    assert [p["id"] for p in await sb.pending_reviews("b")] == [pending["id"]]
    snapshot = await sb.graph.aget_state(config)
    assert snapshot.interrupts[0].response_schema["properties"]["action"]["enum"] == ["approve", "edit", "reject"]
    assert (await sb.resume("b", "approve")).answer.endswith(f"{PHONE}.")
    with pytest.raises(NoPendingReview):
        await sb.resume("b", "approve")


async def test_queries_that_read_nothing_sensitive_do_not_pause(make_settings):
    sb, _ = board(make_settings(), sql=lambda m: COUNT_REPLY)
    turn = await sb.ask("How many customers do we have?", thread_id="n")
    assert not turn.paused and turn.answer == "We have 59 customers." and turn.pending_review == []
    sb2, _ = board(make_settings(sensitive_columns=[]))
    turn = await sb2.ask(PHONE_Q, thread_id="n2")
    assert not turn.paused and PHONE in turn.answer


async def test_postgres_chinook_pauses_on_the_same_columns(make_settings):
    import os

    url = os.environ.get("SWITCHBOARD_TEST_PG_URL")
    if not url:
        pytest.skip('SWITCHBOARD_TEST_PG_URL is not set: eval "$(scripts/postgres.sh)"')
    services = Services(make_settings(database_url=url))
    services.registry.use_chat_model(LOCAL, ScriptedChatModel(respond=by_system_prompt({
        "PostgreSQL SELECT": "SQL: SELECT c.phone FROM customer AS c WHERE c.firstname = 'Luís'\nANSWER: It is {result}.",
        "route one customer-support": "sql"})))
    sb = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    turn = await sb.ask(PHONE_Q, thread_id="pg")
    [pending] = turn.pending_review
    assert pending["columns"] == ["Customer.Phone"]
    turn = await sb.resume("pg", "approve")
    assert turn.answer == f"It is {PHONE}."


async def test_without_a_checkpointed_run_nothing_pauses(make_settings):
    """Benchmarks call the SQL agent directly: there is no thread to pause, so it just runs."""
    from agents.sql import SQLAgent

    services, _ = scripted(make_settings())
    handoff = {"subtask": {"id": "s1", "agent": "sql", "task": PHONE_Q, "depends_on": []}, "summary": "",
               "entities": {}, "evidence": [], "image_path": None, "policy": "balanced"}
    update = await SQLAgent(services)(handoff)
    assert update["results"][0]["ok"] and PHONE in update["results"][0]["answer"]


# --- a two-part turn: only the SQL branch pauses --------------------------------------------------

async def test_two_part_turn_pauses_only_the_sql_branch_and_keeps_the_other(make_settings):
    sb, fake = board(make_settings())
    paused = await sb.ask(TWO_PART, thread_id="two")
    assert [s.agent for s in paused.subtasks] == ["sql", "rag"]
    assert [p["kind"] for p in paused.pending_review] == ["sensitive_sql"]
    assert calls_for(fake, "help-center passages") == 1
    turn = await sb.resume("two", "approve")
    assert calls_for(fake, "help-center passages") == 1  # the knowledge-base answer was kept, not recomputed
    assert PHONE in turn.answer and "14 days" in turn.answer
    assert turn.answer.index(PHONE) < turn.answer.index("14 days")
    assert {r["agent"]: r["ok"] for r in turn.results} == {"sql": True, "rag": True}


async def test_two_pending_reviews_are_decided_by_interrupt_id(make_settings):
    def sql(messages) -> str:
        q = str(messages[-1].content)
        if "Helena" in q:
            return "SQL: SELECT Email FROM Customer WHERE FirstName = 'Helena'\nANSWER: Her email is {result}."
        return phone_reply(messages)

    sb, _ = board(make_settings(), sql=sql)
    turn = await sb.ask("What is the phone number of customer Luís Gonçalves? And what is the email address of "
                        "customer Helena Holý?", thread_id="many")
    assert [p["columns"] for p in turn.pending_review] == [["Customer.Phone"], ["Customer.Email"]]
    phone, email = turn.pending_review
    with pytest.raises(ReviewError, match="name the one to edit"):
        await sb.resume("many", {"action": "edit", "sql": "SELECT 1"})
    turn = await sb.resume("many", "reject", interrupt_id=email["id"])  # one decided, one still open
    assert [p["id"] for p in turn.pending_review] == [phone["id"]]
    turn = await sb.resume("many", {phone["id"]: "approve"})
    assert not turn.paused and PHONE in turn.answer and "A reviewer declined" in turn.answer


# --- a paused turn survives a restart --------------------------------------------------------------

async def test_a_paused_turn_survives_a_restart(make_settings):
    from switchboard.persistence import open_checkpointer

    settings = make_settings()
    async with open_checkpointer(settings) as saver:
        sb, _ = board(settings, saver=saver)
        paused = await sb.ask(TWO_PART, thread_id="restart")
    assert paused.paused
    # a brand-new Services/graph/checkpointer over the same SQLite file = a restarted process
    async with open_checkpointer(settings) as saver:
        sb2, fake2 = board(settings, saver=saver)
        assert await sb2.pending_reviews("restart") == paused.pending_review
        turn = await sb2.resume("restart", "approve")
    assert PHONE in turn.answer and "14 days" in turn.answer
    assert calls_for(fake2, "help-center passages") == 0  # the other part's result was in the checkpoint
    async with open_checkpointer(settings) as saver:
        sb3, _ = board(settings, saver=saver)
        assert await sb3.pending_reviews("restart") == []


# --- cost review before a heavy-tier call ---------------------------------------------------------

async def test_a_heavy_call_that_stays_under_the_limit_does_not_pause(make_settings, tmp_path):
    sb, small, big = tiered(make_settings, tmp_path, review_cost_usd=0.05)
    turn = await sb.ask("How many customers do we have?", thread_id="c0", policy="best-quality")
    assert not turn.paused and [e["model"] for e in turn.ledger] == ["big"]
    spend(sb, "c0-light", 1.0)  # the light tier is never reviewed, however much was spent
    turn = await sb.ask("How many customers do we have?", thread_id="c0-light", policy="cost-saver")
    assert not turn.paused and [e["model"] for e in turn.ledger] == ["small"]


async def test_a_heavy_call_crossing_the_limit_pauses_and_approve_proceeds(make_settings, tmp_path):
    sb, small, big = tiered(make_settings, tmp_path, review_cost_usd=0.05)
    spend(sb, "c1", 0.048)  # this conversation's spend so far, from the ledger
    turn = await sb.ask("How many customers do we have?", thread_id="c1", policy="best-quality")
    [pending] = turn.pending_review
    assert pending["kind"] == "cost" and pending["model"] == "big" and pending["light_model"] == "small"
    assert pending["spent_usd"] == pytest.approx(0.048) and pending["limit_usd"] == 0.05
    assert pending["estimate_usd"] > 0.002 and pending["actions"] == ["approve", "reject"]
    assert big.calls == [] and small.calls == []  # paused before the call
    with pytest.raises(ReviewError):
        await sb.resume("c1", {"action": "edit", "sql": "SELECT 1"})
    turn = await sb.resume("c1", "approve")
    assert turn.answer == "We have 59 customers."
    [entry] = turn.ledger
    assert entry["model"] == "big" and "a reviewer approved big" in entry["note"]


async def test_reject_uses_the_light_tier_and_says_so_in_the_ledger(make_settings, tmp_path):
    sb, small, big = tiered(make_settings, tmp_path, review_cost_usd=0.05)
    spend(sb, "c2", 0.049)
    await sb.ask("How many customers do we have?", thread_id="c2", policy="best-quality")
    turn = await sb.resume("c2", "reject")
    assert turn.answer == "We have 59 customers." and big.calls == []
    [entry] = turn.ledger
    assert entry["model"] == "small" and "a reviewer declined big" in entry["note"] and "small answered" in entry["note"]


async def test_one_cost_decision_covers_the_node_run_then_sensitive_sql_asks_next(make_settings, tmp_path):
    """The heavy model's first query fails and a second opinion is asked (two heavy calls, one
    cost review); it reads a sensitive column, so the same node pauses a second time. Each resume
    re-runs the node and each interrupt gets its own answer."""
    def big_sql(messages) -> str:
        if "CREATE TABLE" in str(messages[0].content):  # the second opinion's view of the schema
            return phone_reply(messages)
        return "SQL: SELECT Fone FROM Customer\nANSWER: {result}"

    sb, small, big = tiered(make_settings, tmp_path, big_sql=big_sql, review_cost_usd=0.05)
    spend(sb, "c3", 0.049)
    turn = await sb.ask(PHONE_Q, thread_id="c3", policy="best-quality")
    assert [p["kind"] for p in turn.pending_review] == ["cost"]
    turn = await sb.resume("c3", "approve")
    assert [p["kind"] for p in turn.pending_review] == ["sensitive_sql"]
    turn = await sb.resume("c3", "approve")
    assert PHONE in turn.answer
    assert [e["model"] for e in turn.ledger] == ["big", "big"]
    assert all("a reviewer approved big" in e["note"] for e in turn.ledger)


async def test_a_new_turn_asks_again(make_settings, tmp_path):
    sb, small, big = tiered(make_settings, tmp_path, review_cost_usd=0.05)
    spend(sb, "c4", 0.049)
    await sb.ask("How many customers do we have?", thread_id="c4", policy="best-quality")
    await sb.resume("c4", "approve")
    turn = await sb.ask("How many customers do we have?", thread_id="c4", policy="best-quality")
    assert [p["kind"] for p in turn.pending_review] == ["cost"]


async def test_direct_calls_outside_a_graph_never_pause(make_settings, tmp_path):
    """The gateway also serves benchmarks' direct calls: there is no turn to pause."""
    sb, small, big = tiered(make_settings, tmp_path, review_cost_usd=0.0)
    assert current_thread_id() is None
    reply, entry = await call_model(sb.services.registry.handle("big", role="sql"),
                                    [HumanMessage("SQLite SELECT")], agent="sql", task="t")
    assert entry.model == "big" and not entry.note


# --- the CLI ---------------------------------------------------------------------------------------

def test_cli_ask_shows_the_review_and_resume_continues_it(monkeypatch, tmp_path, capsys):
    import switchboard.api
    from switchboard.cli import main

    class ScriptedServices(Services):
        def __init__(self, settings) -> None:
            super().__init__(settings)
            self.registry.use_chat_model(LOCAL, ScriptedChatModel(respond=by_system_prompt({
                "SQLite SELECT": phone_reply, "help-center passages": "Refunds are possible within 14 days [1].",
                "route one customer-support": "sql"})))

    monkeypatch.setattr(switchboard.api, "Services", ScriptedServices)
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "data"))

    assert main(["ask", PHONE_Q, "--thread", "cli-r"]) == 0
    out = capsys.readouterr().out
    assert "waiting for review" in out and PHONE_SQL in out and "Customer.Phone" in out
    assert "switchboard resume cli-r --approve" in out

    assert main(["ask", "How many customers?", "--thread", "cli-r"]) == 2
    assert "waiting for review" in capsys.readouterr().err

    assert main(["resume", "cli-r", "--approve", "--json"]) == 0  # a new process: from the checkpoint file
    out = json.loads(capsys.readouterr().out)
    assert PHONE in out["answer"] and out["pending_review"] == [] and out["thread_id"] == "cli-r"

    assert main(["resume", "cli-r", "--approve"]) == 2
    assert "no turn waiting for review" in capsys.readouterr().err

    assert main(["ask", PHONE_Q, "--thread", "cli-j", "--json"]) == 0
    [pending] = json.loads(capsys.readouterr().out)["pending_review"]
    assert pending["kind"] == "sensitive_sql"
    assert main(["resume", "cli-j", "--edit", "DELETE FROM Customer"]) == 0
    assert "nothing was changed" in capsys.readouterr().out
    assert main(["ask", PHONE_Q, "--thread", "cli-k"]) == 0
    capsys.readouterr()
    assert main(["resume", "cli-k", "--reject", "--id", pending["id"]]) == 2  # an id of another thread
    assert "no pending review" in capsys.readouterr().err
    assert main(["resume", "cli-k", "--reject"]) == 0
    assert "A reviewer declined" in capsys.readouterr().out
