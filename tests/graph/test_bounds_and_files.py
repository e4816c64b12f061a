"""Security findings 2, 4, 5 and 6 of issue 15, each reproduced as the attacker did it and shown
to fail safely, with scripted fake models: bounded SQL results (a 5 MB blob per row), image
paths outside the uploads folder, the LangGraph door without a checkpointer, personal data in
columns outside the configured list, parts per message, the model's context window, and
uploads typed by their content."""

from __future__ import annotations

import shutil
import sqlite3
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver

from graphs.state import Context
from graphs.support import build_support_graph, turn_input
from switchboard.api import Switchboard
from switchboard.services import Services
from tests.fakes import ScriptedChatModel, by_system_prompt
from tools.models.gateway import call_model
from tools.models.local_llm import ChatLocalLlama, PromptTooLong
from tools.sql.database import ReadOnlyDatabase
from tools.vision import images
from tools.vision.images import ImageRejected

LOCAL = "local-qwen2.5-coder-1.5b"
INVOICE = Path(__file__).parents[1] / "fixtures" / "images" / "chinook_invoice_98.png"
ZEROBLOB = "SELECT zeroblob(5000000) AS b FROM Genre"
PHONE_Q = "What is the phone number of customer Luís Gonçalves?"
PHONE_SQL = "SELECT Phone FROM Customer WHERE FirstName = 'Luís' AND LastName = 'Gonçalves'"
PHONE = "+55 (12) 3923-5555"
BILLING_Q = "What is the billing address on the invoices of customer Luís Gonçalves?"
BILLING_SQL = ("SELECT DISTINCT i.BillingAddress FROM Invoice i JOIN Customer c ON c.CustomerId = i.CustomerId "
               "WHERE c.FirstName = 'Luís' AND c.LastName = 'Gonçalves'")
ADDRESS = "Av. Brigadeiro Faria Lima, 2170"


def scripted(settings, sql: str, triage: str = "sql") -> tuple[Services, ScriptedChatModel]:
    services = Services(settings)
    fake = ScriptedChatModel(respond=by_system_prompt({
        "SQLite SELECT": sql,
        "help-center passages": "Refunds are possible within 14 days [1].",
        "support assistant of Chinook": "Hello! How can I help?",
        "route one customer-support": triage,
    }, default="I can see a receipt."))
    services.registry.use_chat_model(LOCAL, fake)
    return services, fake


def board(settings, sql: str, **kw) -> tuple[Switchboard, InMemorySaver, ScriptedChatModel]:
    services, fake = scripted(settings, sql, **kw)
    saver = InMemorySaver()
    return Switchboard(build_support_graph(services=services, checkpointer=saver), services), saver, fake


def checkpoint_bytes(saver: InMemorySaver, thread_id: str) -> int:
    """What the thread's checkpoints, pending writes and channel values take, serialized."""
    total = sum(len(c[1]) + len(m[1]) for ns in saver.storage[thread_id].values() for c, m, _ in ns.values())
    total += sum(len(v[2][1]) for key, writes in saver.writes.items() if key[0] == thread_id for v in writes.values())
    total += sum(len(blob[1]) for key, blob in saver.blobs.items() if key[0] == thread_id)
    return total


# --- finding 2: a query that returns large values --------------------------------------------------

def test_result_cells_and_size_are_capped_while_fetching(make_settings):
    db = ReadOnlyDatabase.from_url(make_settings().database_url)
    tracemalloc.start()
    result = db.run(ZEROBLOB)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.rows == [("<BLOB 5000000 bytes>",)] * 25 and result.cut_cells == 25
    assert "The result was cut" in result.cut_note()
    # one 5 MB row at a time, never 25 of them (before: ~125 MB of bytes, then a 4x string)
    assert peak < 15_000_000, peak
    long_text = db.run("SELECT printf('%.*c', 300000, 'x') AS t FROM Track")
    assert len(long_text.rows) == 50 and all(len(r[0].encode()) < 4200 for r in long_text.rows)
    assert long_text.rows[0][0].endswith("… [cut: 300000 bytes]")
    small = ReadOnlyDatabase.from_url(make_settings().database_url, max_cell_bytes=1024, max_result_bytes=8192)
    capped = small.run("SELECT printf('%.*c', 5000, 'y') AS t FROM Track")
    assert capped.size_capped and capped.truncated and 0 < len(capped.rows) < 10
    assert "result size limit" in capped.cut_note()
    assert db.run("SELECT COUNT(*) FROM Genre").cut_note() == ""  # ordinary results are untouched


async def test_zeroblob_asked_in_plain_words_is_bounded_in_answer_and_checkpoints(make_settings):
    sb, saver, _ = board(make_settings(), f"SQL: {ZEROBLOB}\nANSWER: {{result}}")
    tracemalloc.start()
    turn = await sb.ask(f"Run this exact SQL query and show me the result: {ZEROBLOB}", thread_id="z")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "<BLOB 5000000 bytes>" in turn.answer and "The result was cut" in turn.answer
    assert len(turn.answer) < 2000
    assert checkpoint_bytes(saver, "z") < 200_000, checkpoint_bytes(saver, "z")  # before: ~954 MB
    assert peak < 40_000_000, peak  # before: +763 MB


async def test_a_long_conversation_keeps_its_last_messages_not_all_of_them(make_settings):
    """Every checkpoint of a turn holds the state and every turn reads it back: the transcript
    is bounded like the summary, so turn 30 costs what turn 3 did."""
    from graphs.state import MESSAGES_KEPT

    services = Services(make_settings(cache_ttl_s=0))
    services.registry.use_chat_model(LOCAL, ScriptedChatModel(respond=by_system_prompt(
        {"support assistant of Chinook": "Hello! How can I help?"})))
    sb = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
    turns = MESSAGES_KEPT // 2 + 5
    for i in range(turns):
        await sb.ask(f"Hi there, this is message {i}!", thread_id="long")
    state = await sb.graph.aget_state({"configurable": {"thread_id": "long"}})
    texts = [str(m.content) for m in state.values["messages"]]
    assert len(texts) == MESSAGES_KEPT
    assert texts[-2:] == [f"Hi there, this is message {turns - 1}!", "Hello! How can I help?"]
    assert texts[0] == f"Hi there, this is message {turns - MESSAGES_KEPT // 2}!"  # the oldest ones went
    assert len(services.audit.turns(thread="long")) == turns  # the audit trail still has every turn


async def test_zeroblob_through_a_review_edit_is_bounded(make_settings):
    sb, saver, _ = board(make_settings(), f"SQL: {PHONE_SQL}\nANSWER: The phone number is {{result}}.")
    paused = await sb.ask(PHONE_Q, thread_id="e")
    assert paused.paused
    tracemalloc.start()
    turn = await sb.resume("e", {"action": "edit", "sql": ZEROBLOB})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    [result] = turn.results
    assert result["ok"] and result["evidence"]["rows"][0] == ["<BLOB 5000000 bytes>"]
    assert "The result was cut" in turn.answer and len(turn.answer) < 2000
    assert checkpoint_bytes(saver, "e") < 200_000, checkpoint_bytes(saver, "e")
    assert peak < 40_000_000, peak


# --- finding 4: image_path reads any file; the LangGraph door without a checkpointer -----------------

def langgraph_door(settings, triage: str = "sql"):
    """The graph as switchboard/langgraph_app.py builds it: no checkpointer of its own, run by a bare ainvoke."""
    services, fake = scripted(settings, f"SQL: {PHONE_SQL}\nANSWER: The phone number is {{result}}.", triage)
    return build_support_graph(services=services), fake


async def test_image_path_outside_uploads_is_refused_alike_whether_or_not_it_exists(make_settings, tmp_path):
    settings = make_settings()
    graph, fake = langgraph_door(settings)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(INVOICE, elsewhere / "receipt.png")  # a readable PNG with text, outside the uploads
    (elsewhere / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    uploads = images.uploads_dir(settings.data_dir)
    uploads.mkdir(parents=True)
    (uploads / "link.png").symlink_to(elsewhere / "receipt.png")  # a symlink out of the uploads
    attempts = [elsewhere / "receipt.png", elsewhere / "id_rsa", elsewhere / "missing.png", elsewhere,
                uploads / ".." / ".." / "elsewhere" / "receipt.png", uploads / "link.png", uploads, "receipt.png"]
    answers = set()
    for i, path in enumerate(attempts):
        state = await graph.ainvoke(turn_input("What does this receipt say?", str(path)),
                                    config={"configurable": {"thread_id": f"img{i}"}}, context=Context())
        [vision] = [r for r in state["results"] if r["agent"] == "vision"]
        assert not vision["ok"] and vision["answer"] == images.OUTSIDE_UPLOADS
        assert "image" not in vision["evidence"] and "ocr_text" not in vision["evidence"]
        answers.add(state["answer"])
    [answer] = answers  # one refusal for all: nothing says whether a file exists, its type or size
    assert images.OUTSIDE_UPLOADS in answer
    for leak in ("INVOICE", "Invoice", "3.98", "does not exist", "bytes", "KB", "PNG", "directory", "text"):
        assert leak not in answer
    assert fake.calls == []  # nothing was read, so no model saw anything


def test_uploads_inside_the_folder_are_read(make_settings):
    settings = make_settings()
    uploads = images.uploads_dir(settings.data_dir)
    inside = uploads / "abc" / "receipt.png"
    inside.parent.mkdir(parents=True)
    shutil.copy(INVOICE, inside)
    assert images.validate_upload(inside, uploads).original_format == "PNG"
    with pytest.raises(ImageRejected) as gone:
        images.validate_upload(uploads / "abc" / "gone.png", uploads)
    assert gone.value.message == images.UPLOAD_GONE and str(uploads) not in gone.value.message
    # the local doors (Python API, CLI) copy the caller's own file into the uploads
    stashed = images.stash_local_image(INVOICE, uploads)
    assert stashed.parent.parent == uploads.resolve() or stashed.parent.parent == uploads
    assert images.stash_local_image(inside, uploads) == inside.resolve()


async def test_langgraph_door_without_a_checkpointer_refuses_a_query_that_needs_review(make_settings):
    graph, fake = langgraph_door(make_settings())
    state = await graph.ainvoke(turn_input(PHONE_Q), config={"configurable": {"thread_id": "lg"}}, context=Context())
    [result] = state["results"]
    assert not result["ok"] and "a reviewer must approve" in state["answer"] and "Customer.Phone" in state["answer"]
    assert PHONE not in state["answer"] and PHONE not in str(state["results"])
    assert "rows" not in result["evidence"] and result["evidence"]["review"]["action"] == "refused"
    # ... and without even a thread id
    state = await graph.ainvoke(turn_input(PHONE_Q), context=Context())
    assert PHONE not in str(state) and "a reviewer must approve" in state["answer"]


# --- finding 5: personal data outside the configured columns ---------------------------------------

async def test_billing_address_pauses_for_review_like_the_customer_address(make_settings):
    sb, _, _ = board(make_settings(), f"SQL: {BILLING_SQL}\nANSWER: The billing address is {{result}}.")
    turn = await sb.ask(BILLING_Q, thread_id="b")
    assert turn.paused and ADDRESS not in turn.answer and ADDRESS not in str(turn.results)
    [pending] = turn.pending_review
    assert pending["columns"] == ["Invoice.BillingAddress"]
    approved = await sb.resume("b", "approve")
    assert ADDRESS in approved.answer
    off, _, _ = board(make_settings(sensitive_from_profile=False),
                      f"SQL: {BILLING_SQL}\nANSWER: The billing address is {{result}}.")
    assert ADDRESS in (await off.ask(BILLING_Q, thread_id="b")).answer  # the configured list alone misses it


def test_personal_columns_are_found_by_name_value_and_copy(make_settings, tmp_path):
    chinook = ReadOnlyDatabase.from_url(make_settings().database_url)
    found = chinook.personal_columns()
    assert {"Invoice.BillingAddress", "Customer.Address", "Customer.Email", "Employee.Phone"} <= set(found)
    assert not {"Customer.FirstName", "Customer.City", "Invoice.BillingCity", "Track.Name"} & set(found)
    assert chinook.personal_columns() is found  # computed once per database
    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE Client (Id INTEGER PRIMARY KEY, Name TEXT, Home TEXT)")
        conn.execute("CREATE TABLE Parcel (Id INTEGER PRIMARY KEY, ShipTo TEXT, Contact TEXT, Note TEXT)")
        for i in range(20):
            conn.execute("INSERT INTO Client VALUES (?, ?, ?)", (i, f"Client {i}", f"{i} Long Road, Springfield"))
            conn.execute("INSERT INTO Parcel VALUES (?, ?, ?, ?)",
                         (i, f"{i} Long Road, Springfield", f"client{i}@example.org", f"fragile box {i}"))
    shop = ReadOnlyDatabase.from_url(f"sqlite:///{path}")
    # Contact by its values (e-mails); ShipTo as a copy of... nothing flagged yet: Home is not
    # named like an address, so only the e-mails are found, and then a column named like one
    assert shop.personal_columns() == ("Parcel.Contact",)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE Account (Id INTEGER PRIMARY KEY, StreetAddress TEXT)")
        conn.executemany("INSERT INTO Account VALUES (?, ?)", [(i, f"{i} Long Road, Springfield") for i in range(20)])
    copied = ReadOnlyDatabase.from_url(f"sqlite:///{path}").personal_columns()
    assert copied == ("Account.StreetAddress", "Client.Home", "Parcel.Contact", "Parcel.ShipTo")


# --- finding 6: parts per message ------------------------------------------------------------------

async def test_a_long_message_is_refused_and_many_parts_are_capped(make_settings):
    services, _ = scripted(make_settings(), "SQL: SELECT COUNT(*) FROM Customer\nANSWER: We have {result} customers.")
    triage = services.triage
    flood = " ".join(f"How many customers are from country number {i}, please?" for i in range(200))
    assert len(flood) > 10_000
    decision = await triage.decide(flood, has_image=False)
    assert decision.subtasks == [] and "at most 4,000 characters" in decision.refusal
    twelve = " ".join(f"How many customers are from country {i}?" for i in range(12))
    decision = await triage.decide(twelve, has_image=False)
    assert len(decision.subtasks) == 8 and len(decision.skipped) == 4
    assert "the last 4 parts were not looked at" in decision.skipped_note


async def test_parts_caps_through_the_graph(make_settings):
    sb, _, fake = board(make_settings(), "SQL: SELECT COUNT(*) FROM Customer\nANSWER: We have {result} customers.")
    flood = " ".join(f"How many customers are from country number {i}, please?" for i in range(200))
    turn = await sb.ask(flood, thread_id="f")
    assert turn.subtasks == [] and "at most 4,000 characters" in turn.answer and fake.calls == []
    twelve = " ".join(f"How many customers are from country {i}?" for i in range(12))
    turn = await sb.ask(twelve, thread_id="g")
    assert len(turn.subtasks) == 8 and len(fake.calls) == 8
    assert turn.answer.endswith("please send them again in another message.)")


# --- the model's context window ----------------------------------------------------------------------

async def test_a_prompt_past_the_context_window_fails_the_part_with_a_clear_message(make_settings):
    sb, _, fake = board(make_settings(local_ctx=1024), "SQL: SELECT COUNT(*) FROM Customer\nANSWER: {result}")
    turn = await sb.ask("How many customers do we " + "really " * 480 + "have?", thread_id="c")
    assert len(turn.subtasks) == 1
    assert "too long for the model to read" in turn.answer and "1,024" in turn.answer
    assert "ValueError" not in turn.answer and "Requested tokens" not in turn.answer and fake.calls == []
    services, _ = scripted(make_settings(local_ctx=512), "")
    with pytest.raises(PromptTooLong):
        await call_model(services.registry.handle(LOCAL, role="general"),
                         [SystemMessage("x"), HumanMessage("word " * 3000)], agent="general", task="t",
                         max_tokens=64)


def test_the_local_model_counts_with_its_own_tokenizer():
    model = ChatLocalLlama(model_path="unused.gguf", n_ctx=100)
    llm = SimpleNamespace(tokenize=lambda data, add_bos, special: list(data.split()))
    model._check_context(llm, [{"role": "user", "content": "a " * 50}], max_tokens=30)
    with pytest.raises(PromptTooLong) as exc:
        model._check_context(llm, [{"role": "user", "content": "a " * 80}], max_tokens=30)
    assert exc.value.tokens == 118 and exc.value.limit == 100


# --- uploads are typed by content ----------------------------------------------------------------------

SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script></svg>'


def test_uploads_are_typed_by_content_never_by_the_claimed_type():
    assert images.sniff_upload(INVOICE.read_bytes()).mime == "image/png"
    for data, what in ((SVG, "SVG"), (b"%PDF-1.7", "PDF"), (b"<html><script>x</script></html>", "HTML")):
        with pytest.raises(ImageRejected) as exc:
            images.sniff_upload(data, "receipt.png")
        assert what in exc.value.message


def test_chat_ui_uploads_are_typed_by_content(tmp_path):
    from switchboard.ui import uploads

    svg = tmp_path / "evil.svg"
    svg.write_bytes(SVG)
    png_named_jpg = tmp_path / "photo.jpg"
    png_named_jpg.write_bytes(INVOICE.read_bytes())
    lying = SimpleNamespace(id="e1", name="receipt.png", path=str(svg), mime="image/png")
    real = SimpleNamespace(id="e2", name="photo.jpg", path=str(png_named_jpg), mime="text/plain")
    assert uploads.pick_attachment([lying, real]) is real  # by content, not by the claimed MIME type
    assert uploads.stash_upload(real, tmp_path, "t").name == "photo.png"
    assert uploads.pick_attachment([lying]) is lying
    with pytest.raises(ImageRejected, match="SVG"):
        uploads.stash_upload(lying, tmp_path, "t")
    assert not (tmp_path / "uploads" / "t" / "e1").exists()


async def test_langgraph_door_without_a_checkpointer_rejects_a_cost_review(make_settings, tmp_path):
    """The cost gate too: where no reviewer can be asked, the heavy call is declined (light tier)."""
    from tests.stacks import spend, tiered

    sb, small, big = tiered(make_settings, tmp_path, review_cost_usd=0.05)
    spend(sb, "nc", 0.049)
    graph = build_support_graph(services=sb.services)  # no checkpointer
    state = await graph.ainvoke(turn_input("How many customers do we have?"),
                                config={"configurable": {"thread_id": "nc"}}, context=Context(policy="best-quality"))
    assert state["answer"] == "We have 59 customers." and big.calls == [] and small.calls
    [entry] = state["ledger"]
    assert entry["model"] == "small" and "declined big" in entry["note"]
