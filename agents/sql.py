"""The SQL specialist: a question in words -> one validated, read-only SELECT -> an answer.

One model call writes both the query and an answer sentence with a ``{result}`` slot, so a
count question costs one call, not two. The query is checked (sqlglot: a single SELECT, known
tables and columns) before it runs; a database error or a malformed query goes back to the model
for a bounded number of retries. A query that would *change* data is refused, and the user is
told plainly that the database can only be read.

The prompt names the SQL dialect, describes the database (:class:`PromptProfile`: the Chinook
demo gets its own notes, any other database a generic description) and shows the schema that
:class:`agents.sql_schema.SchemaSelector` picks for the question.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from sqlalchemy.engine import make_url

from agents import prompts
from agents.base import Outcome, context_block, specialist
from agents.contract import Evidence, Handoff
from agents.deps import AgentServices
from agents.profile import BusinessProfile
from agents.sql_schema import SchemaSelector
from tools import review
from tools.models.gateway import call_model
from tools.models.registry import ModelHandle
from tools.sql import sensitive
from tools.sql.database import ReadOnlyDatabase, SQLExecutionError
from tools.sql.guard import UnsafeSQL, check_read_only, double_quoted_values_as_strings
from tools.sql.results import QueryResult
from tools.sql.values import ValueIndex, ValueMatch

log = logging.getLogger("switchboard.agents.sql")

MAX_ATTEMPTS = 3
MAX_ROWS = 50
NO_QUERY = "NONE"  # what the model writes on the SQL line when no read-only query can answer
DIALECT_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
READ_ONLY_REFUSAL = (
    "I can't do that: I can only look data up in the database, never change, add or delete it, "
    "so nothing was changed."
)
# A sentence written before the query ran that claims a write happened (after a write was refused).
_CLAIMS_A_CHANGE = re.compile(
    r"\b(delet(e|ed|es|ing)|remov(e|ed|es|ing)|drop(s|ped|ping)?|updat(e|ed|es|ing)|modif(y|ied|ies)"
    r"|chang(e|ed|es|ing)|insert(s|ed|ing)?|eras(e|ed|es|ing)|truncat(e|ed|es|ing)|wip(e|ed|es|ing))\b",
    re.I,
)
# The SQL runs from "SQL:" to the ANSWER line, a blank line or the end: models asked for one line
# still break long joins over several.
_SQL_BLOCK = re.compile(r"^[ \t]*SQL:[ \t]*(.+?)(?=^[ \t]*ANSWER:|\n[ \t]*\n|\Z)", re.I | re.M | re.S)
_ANSWER_LINE = re.compile(r"^\s*ANSWER:\s*(.+?)\s*$", re.I | re.M)
_FENCE = re.compile(r"```(?:sql)?\s*(.+?)```", re.S | re.I)


def parse_reply(text: str) -> tuple[str, str]:
    """Split the model's two-line reply into (sql, answer template)."""
    if m := _SQL_BLOCK.search(text):
        sql = m.group(1)
        if f := _FENCE.search(sql):
            sql = f.group(1)
    elif f := _FENCE.search(text):
        sql = f.group(1)
    else:
        sql = next((ln for ln in text.splitlines() if re.match(r"\s*(SELECT|WITH)\b", ln, re.I)), text)
    a = _ANSWER_LINE.search(text)
    return sql.strip().strip("`").strip().rstrip(";").strip(), (a.group(1).strip() if a else "")


def render_answer(template: str, result: QueryResult) -> str:
    """Fill the model's answer sentence with the real result (never a number the model made up).

    The template is only trusted where it has a ``{result}`` slot: a sentence written before the
    query ran cannot know whether anything matched, so an empty result always says so plainly.
    One slot per column of a one-row result ("{result} has {result} albums") is filled in order.
    """
    answer = _render(template, result)
    note = result.cut_note()  # a result cut to its byte caps says so
    return f"{answer}\n\n{note}" if note else answer


def _render(template: str, result: QueryResult) -> str:
    rows = result.rows
    if not rows:
        if result.size_capped:
            return "The database returned a result too large to show here."
        return "I found no matching records in the database."
    slots = template.count("{result}")
    if slots > 1 and len(rows) == 1 and slots == len(rows[0]):
        return _fill_in_order(template, [_display(v) for v in rows[0]])
    slot = slots == 1  # several slots that don't match the columns can't be filled truthfully
    if len(rows) == 1 and len(rows[0]) == 1:
        value = _display(rows[0][0])
        return template.replace("{result}", value) if slot else f"The database says: {value}."
    if len(result.columns) <= 2 and len(rows) <= 10:
        listed = ", ".join(" ".join(str(v) for v in r) for r in rows)
        return template.replace("{result}", listed) if slot else f"The database returned: {listed}."
    more = " (first rows shown)" if result.truncated or len(rows) > 10 else ""
    return f"The database returned {len(rows)} row{'s' if len(rows) != 1 else ''}{more}:\n\n{result.as_markdown(max_rows=10)}"


def _fill_in_order(template: str, values: list[str]) -> str:
    parts = template.split("{result}")
    return parts[0] + "".join(value + rest for value, rest in zip(values, parts[1:], strict=True))


def _display(value: Any) -> str:
    """One value for a sentence: money-like numbers with 2 decimals (SQLite float, PostgreSQL Decimal)."""
    if isinstance(value, float) or (isinstance(value, Decimal) and value != value.to_integral_value()):
        return f"{value:,.2f}"
    return str(value)


def single_row_entities(result: QueryResult) -> dict[str, str]:
    """A one-row answer establishes facts later turns can refer to (e.g. the customer's name)."""
    if len(result.rows) != 1 or len(result.columns) < 2:
        return {}
    row = dict(zip(result.columns, result.rows[0], strict=True))
    ents = {k: str(v) for k, v in row.items() if v is not None and len(str(v)) < 80}
    if "FirstName" in row and "LastName" in row:
        ents = {"person": f"{row['FirstName']} {row['LastName']}", **ents}
    return ents


_ASKS_A_NUMBER = re.compile(r"\b(how (many|much)|number of|count|total|sum|average|avg)\b", re.I)


def doubtful(question: str, result: QueryResult) -> str:
    """Why a result that ran looks wrong for the question ("" when it does not): no rows, only
    NULL, or 0 where a count or sum was asked ("how many dogs" answered 0 is usually a bad filter)."""
    rows = result.rows
    if not rows:
        return "" if result.size_capped else "the query found no rows"
    if len(rows) == 1 and all(v is None for v in rows[0]):
        return "the query returned only NULL"
    if len(rows) == 1 and len(rows[0]) == 1 and rows[0][0] == 0 and _ASKS_A_NUMBER.search(question):
        return "the query counted 0"
    return ""


@dataclass
class Candidate:
    """One query the model wrote, and what became of it."""

    view: str  # "schema" (the compact schema prompt) or "create-table" (the second opinion's)
    reply: str
    sql: str
    template: str
    model: str
    result: QueryResult | None = None
    error: str = ""
    unsafe: bool = False  # it would change data (refused)
    no_query: bool = False  # the model said no query answers it
    sensitive: list[str] = field(default_factory=list)  # needs a reviewer before it runs
    doubt: str = ""  # it ran, but see :func:`doubtful`

    @property
    def ran(self) -> bool:
        return self.result is not None

    @property
    def good(self) -> bool:
        """Ran with a plausible result, or waits for a reviewer (it cannot be judged before)."""
        return bool(self.sensitive) or (self.ran and not self.doubt)


def same_rows(a: Candidate, b: Candidate) -> bool:
    """Whether two candidates' results hold the same rows (in any order)."""
    if a.result is None or b.result is None:
        return False
    return sorted(map(repr, a.result.rows)) == sorted(map(repr, b.result.rows))


class SQLEvidence(Evidence, total=False):
    """What the SQL specialist found: the query that ran and (the first rows of) its result."""

    sql: str
    columns: list[str]
    rows: list[list[Any]]  # the first 10
    row_count: int
    truncated: bool  # the result hit the row or byte cap
    table: str  # the first rows as Markdown
    attempts: list[dict[str, Any]]  # each model's query and its error, in order
    review: dict[str, Any]  # a reviewer's decision on a query that reads sensitive columns
    schema_tables: list[str]  # the tables the schema selector showed the model
    values: list[str]  # the database values the question names, as the prompt showed them


@dataclass(frozen=True)
class PromptProfile:
    """What the SQL prompt says about a database besides its schema."""

    dialect: str  # as the prompt names it: "SQLite", "PostgreSQL"
    subject: str  # "the Chinook music store database"
    notes: str  # lines ending in a newline, or ""
    example: str  # a worked question/SQL/ANSWER triple that runs on this database

    def system_prompt(self, schema: str) -> str:
        return prompts.SQL_SYSTEM.format(
            dialect=self.dialect, subject=self.subject, schema=schema, notes=self.notes, example=self.example
        )


def database_name(db: ReadOnlyDatabase) -> str:
    """A human name for the database: the SQLite file's stem or PostgreSQL's database name."""
    if db.path is not None:
        return db.path.stem
    return Path(make_url(db.url).database or "database").name


def prompt_profile(db: ReadOnlyDatabase, business: BusinessProfile | None = None) -> PromptProfile:
    """The business profile's notes on its own database (the demo's on Chinook) when that database
    is connected; any other database a generic description.

    Recognised by the table names the profile lists, so Chinook on SQLite and on PostgreSQL (same
    names) both get the notes, and a user's own database never hears about invoices it does not have.
    """
    dialect = DIALECT_NAMES[db.dialect]
    dialect_notes = prompts.SQL_DIALECT_NOTES[db.dialect]
    if business is not None and business.sql is not None and business.sql.applies_to(set(db.table_names())):
        notes = dialect_notes + business.sql.notes.get(db.dialect, "")
        return PromptProfile(dialect, business.sql.subject, notes, business.sql.example)
    tables = db.schema()
    if not tables:
        raise ValueError(f"{db!r} has no tables to query")
    example_table = max(tables, key=lambda t: (t.row_count > 0, -len(t.name))).name  # a short, filled one
    # a profile without notes of its own is the one written for this database (init); the demo's
    # profile beside another database says nothing about it
    subject = (prompts.SQL_BUSINESS_SUBJECT.format(business=business.business)
               if business is not None and business.sql is None
               else prompts.SQL_GENERIC_SUBJECT.format(name=database_name(db)))
    return PromptProfile(dialect, subject, dialect_notes,
                         prompts.SQL_GENERIC_EXAMPLE.format(table=example_table, things=_things(example_table)))


def _things(table: str) -> str:
    """A table's rows in words: ``concert_hall_bookings`` -> "concert hall bookings", ``Dogs`` -> "dogs"."""
    from tools.routing.generate import plural, singular, words

    ws = [w.lower() for w in words(table)] or [table.lower()]
    return " ".join([*ws[:-1], plural(singular(ws[-1]))])


def claims_a_change(template: str) -> bool:
    """True when an answer sentence says data was deleted/updated/...: never true of a read."""
    return bool(_CLAIMS_A_CHANGE.search(template))


class SQLAgent:
    """The ``sql`` node. ``model`` pins a registry model by name (benchmarks); by default the
    routing policy's tier decides, like every agent."""

    name: ClassVar[str] = "sql"
    title: ClassVar[str] = "SQL agent"  # the chat UI's step
    label: ClassVar[str] = "In our records"  # introduces its part of a combined answer

    def __init__(self, services: AgentServices, model: str | None = None) -> None:
        self.services = services
        self.model = model
        self._values: ValueIndex | None = None
        self._values_lock = threading.Lock()

    @cached_property
    def selector(self) -> SchemaSelector:
        # The embedder is looked up on first use: only databases over the budget need it.
        return SchemaSelector(self.services.db, embed=lambda texts: self.services.embedder.embed(texts))

    @cached_property
    def profile(self) -> PromptProfile:
        return prompt_profile(self.services.db, self.services.agent_config.profile)

    def schema_text(self, question: str, linked: Sequence[str] = ()) -> str:
        """The schema part of the prompt: whole when small, the question's tables when large
        (``linked``: tables holding a value the question names, always among them)."""
        return self.selector.render(question, linked)

    def _handle(self, policy: str, question: str, out: Outcome[SQLEvidence]) -> ModelHandle:
        if self.model is not None:
            return self.services.registry.handle(self.model, role="sql")
        handle, tier = self.services.registry.route("sql", policy, task=question)
        out.evidence["tier"] = tier.as_dict()
        return handle

    def _escalate(self, handle: ModelHandle, reason: str, out: Outcome[SQLEvidence]) -> ModelHandle:
        """Cascade: the light model's query failed to parse, validate or run, which is a cheap and
        reliable sign it is out of its depth; the remaining attempts go to the heavy tier."""
        if self.model is not None or out.evidence.get("escalations"):
            return handle
        heavy = self.services.registry.escalation(handle, "sql")
        if heavy is None:
            return handle
        out.evidence["escalations"] = [{"from": handle.spec.name, "to": heavy.spec.name, "reason": reason}]
        log.info("sql: escalating from %s to %s: %s", handle.spec.name, heavy.spec.name, reason)
        return heavy

    @staticmethod
    def _escalation_note(handle: ModelHandle, out: Outcome[SQLEvidence]) -> str:
        """The ledger note of a call made on the model this subtask escalated to."""
        for esc in out.evidence.get("escalations") or []:
            if esc["to"] == handle.spec.name:
                return f"escalated from {esc['from']}: {esc['reason']}"
        return ""

    @staticmethod
    def checkable(evidence: SQLEvidence) -> tuple[str, str] | None:
        """What a validator checks this answer against: the query and its result."""
        if not evidence.get("sql"):
            return None
        return "the database result", f"SQL: {evidence['sql']}\nResult:\n{evidence.get('table', '')}"

    async def __call__(self, handoff: Handoff) -> dict[str, Any]:
        async with specialist(self.name, handoff, SQLEvidence()) as out:
            await self._answer(handoff, out)
        return out.update()

    def _prepare(self, sql: str) -> str:
        """Guard, make SQLite's double-quoted values explicit, validate names; the SQL to run."""
        db = self.services.db
        sql = check_read_only(sql, dialect=db.dialect)
        if db.dialect == "sqlite":
            sql = double_quoted_values_as_strings(sql, db.column_map(), db.dialect)
        problems = db.validate(sql)
        if problems:
            raise SQLExecutionError("; ".join(problems), sql)
        return sql

    def _sensitive(self, sql: str) -> list[str]:
        """The sensitive columns a prepared query reads -- configured, plus those the database's
        profile shows to hold contact data (``sensitive_from_profile``) -- inside a graph run
        (direct calls, e.g. benchmarks, never pause; a run that cannot pause refuses them)."""
        settings = self.services.agent_config
        if not settings.sensitive_columns or review.review_mode() == "off":
            return []
        db = self.services.db
        columns = sensitive.sensitive_columns(settings.sensitive_columns, db, settings.sensitive_from_profile)
        return sensitive.sensitive_reads(sql, db.column_map(), columns, db.dialect)

    async def _run_reviewed(self, out: Outcome[SQLEvidence], sql: str, template: str, columns: list[str]) -> None:
        """Pause for a reviewer (``interrupt``) before a query that reads sensitive columns.

        LangGraph re-runs this node from its start on resume, so the model is asked again and may
        write another query. The decision therefore carries the SQL to run -- the query the
        reviewer was shown, or their edit -- which is prepared like any query (read-only guard,
        known names) and runs instead of whatever was regenerated; the model's answer sentence is
        kept only when it was written for exactly that query."""
        question = out.subtask["task"]
        if review.review_mode() != "interrupt":  # no checkpointer: no one can be asked, so it does not run
            out.evidence["review"] = {"kind": review.SENSITIVE_SQL, "columns": columns, "action": "refused"}
            out.fail(review.no_reviewer_refusal(question, columns),
                     error="needs review, but this run cannot pause for one (no checkpointer)")
            return
        decision = review.ask(review.sql_payload(out.subtask, sql, columns))
        verdict: dict[str, Any] = {"kind": review.SENSITIVE_SQL, "columns": columns, "action": decision.action}
        out.evidence["review"] = verdict
        if decision.action == "reject":
            out.fail(f"A reviewer declined to run the database query for “{question}” because it reads sensitive "
                     "data, so nothing was looked up.", error="declined by a reviewer")
            return
        try:
            chosen = self._prepare(decision.sql)
            result = await asyncio.to_thread(self.services.db.run, chosen, max_rows=MAX_ROWS)  # off the event loop
        except UnsafeSQL as exc:
            why = "" if exc.malformed else " I can only read the database, so nothing was changed."
            out.fail(f"The reviewed query for “{question}” was not run: {exc.reason}.{why}",
                     error=f"reviewed query refused: {exc.reason}")
            return
        except SQLExecutionError as exc:
            out.fail(f"The reviewed query for “{question}” could not run: {exc}", error=f"reviewed query failed: {exc}")
            return
        verdict["sql"] = chosen
        if chosen != sql:  # what was reviewed is not what the model wrote this time
            verdict["columns"] = self._sensitive(chosen)
            out.evidence["attempts"].append({"model": "reviewer", "sql": chosen, "error": ""})
        self._succeed(out, template if chosen == sql else "", chosen, result)

    def value_matches(self, question: str) -> list[ValueMatch]:
        """The database values the question names (value grounding, ``tools/sql/values.py``)."""
        with self._values_lock:  # one index per database, built on first use
            if self._values is None:
                config = self.services.agent_config
                self._values = ValueIndex.build(self.services.db, exclude=config.sensitive_columns)
        return self._values.match(question)

    async def _ask(self, handle: ModelHandle, msgs: list[BaseMessage], out: Outcome[SQLEvidence],
                   view: str, note: str = "") -> Candidate:
        """One model call -> one candidate query, checked and (unless it needs a review) run."""
        question = out.subtask["task"]
        escalation = self._escalation_note(handle, out)
        reply, entry = await call_model(
            handle, msgs, agent="sql", task=question, max_tokens=160, subtask_id=out.subtask["id"],
            note="; ".join(n for n in (escalation, note) if n), escalated=bool(escalation),
        )
        out.evidence["model"] = handle.spec.name
        out.ledger.append(entry)
        text = str(reply.content)
        sql, template = parse_reply(text)
        c = Candidate(view=view, reply=text, sql=sql, template=template, model=handle.spec.name)
        if sql.upper() == NO_QUERY:
            c.error, c.no_query = "the model wrote no query", True
        else:
            try:
                c.sql = self._prepare(sql)
                c.sensitive = self._sensitive(c.sql)  # such a query runs only once a reviewer approves it
                if not c.sensitive:
                    c.result = await asyncio.to_thread(self.services.db.run, c.sql, max_rows=MAX_ROWS)
            except UnsafeSQL as exc:
                c.error, c.unsafe = exc.reason, not exc.malformed
            except SQLExecutionError as exc:
                c.error = str(exc)
        if c.result is not None:
            c.doubt = doubtful(question, c.result)
        out.evidence["attempts"].append({"model": c.model, "sql": c.sql if not c.no_query else "", "error": c.error,
                                         "view": view, **({"doubt": c.doubt} if c.doubt else {})})
        return c

    async def _answer(self, handoff: Handoff, out: Outcome[SQLEvidence]) -> None:
        """Execution-guided: the first query stands unless it fails, or runs but looks wrong (no rows,
        a count of 0, only NULL); then a second opinion is asked from the same model with the schema
        as ``CREATE TABLE`` statements, and the results decide. A third call, with the error fed back,
        only when both failed to run. A request to change data is refused as before."""
        question = out.subtask["task"]
        handle = self._handle(handoff["policy"], question, out)
        values = await asyncio.to_thread(self.value_matches, question)
        grounding = prompts.SQL_VALUES.format(matches="; ".join(m.render() for m in values)) if values else ""
        user = HumanMessage(prompts.SQL_USER.format(context=context_block(handoff), values=grounding,
                                                    question=question))
        linked = [m.table for m in values]
        msgs: list[BaseMessage] = [SystemMessage(self.profile.system_prompt(self.schema_text(question, linked))), user]
        out.evidence.update({"model": handle.spec.name, "attempts": []})
        if values:
            out.evidence["values"] = [m.render() for m in values]
        if self.selector.needs_selection():
            out.evidence["schema_tables"] = self.selector.select(question, linked)
        refused: str | None = None  # why a query that would write was refused, if one was
        first = await self._ask(handle, msgs, out, "schema")
        # a request to change data: the model is told the database is read-only, on its own conversation
        for _ in range(MAX_ATTEMPTS - 1):
            if not first.unsafe:
                break
            refused = first.error
            msgs += [AIMessage(first.reply), HumanMessage(prompts.SQL_RETRY_READ_ONLY.format(error=first.error))]
            first = await self._ask(handle, msgs, out, "schema")
        if first.unsafe:
            self._decline(out, question, "", first.error)
            return
        if first.no_query or (refused is not None and first.ran and claims_a_change(first.template)):
            self._decline(out, question, first.template if first.no_query else "", refused)
            return
        if refused is not None and not (first.ran or first.sensitive):
            self._decline(out, question, "", refused)
            return
        chosen = (first if first.good or refused is not None
                  else await self._second_opinion(handle, first, msgs[0], user, linked, out))
        if chosen is None:
            last = out.evidence["attempts"][-1]["error"] or "no query"
            out.fail(f"I could not build a working database query for “{question}” "
                     f"after {len(out.evidence['attempts'])} attempts (last problem: {last}).", error=last)
            return
        if chosen.sensitive:
            await self._run_reviewed(out, chosen.sql, chosen.template, chosen.sensitive)
            return
        assert chosen.result is not None
        self._succeed(out, chosen.template, chosen.sql, chosen.result)

    async def _second_opinion(self, handle: ModelHandle, first: Candidate, system: BaseMessage, user: HumanMessage,
                              linked: Sequence[str], out: Outcome[SQLEvidence]) -> Candidate | None:
        """The first query failed or looks wrong (it is neither plausible nor waiting for a reviewer):
        decide between it and a second one (see ``_answer``). ``system`` and ``user`` are the first
        conversation's prompt."""
        question = out.subtask["task"]
        why = first.error or first.doubt
        if first.error:
            handle = self._escalate(handle, f"the light model's query failed: {first.error}", out)
        ddl = [SystemMessage(self.profile.system_prompt(self.selector.render_ddl(question, linked))), user]
        second = await self._ask(handle, ddl, out, "create-table", note=f"second opinion: {why}")
        if second.good:
            return second
        if first.ran and second.ran:  # both doubtful: agreeing results are probably just the truth
            return first if same_rows(first, second) else second
        if first.ran:
            return first
        if second.ran or second.sensitive:
            return second
        # neither ran: the first conversation, told its error (the old retry), gets one more call
        retry = [system, user, AIMessage(first.reply), HumanMessage(prompts.SQL_RETRY.format(error=first.error))]
        third = await self._ask(handle, retry, out, "schema", note="repair after two failed queries")
        return third if third.ran or third.sensitive else None

    @staticmethod
    def _decline(out: Outcome[SQLEvidence], question: str, explanation: str, refused: str | None) -> None:
        """No query answers this: a write request (refused) or something the data cannot tell."""
        if refused is not None:
            out.fail(READ_ONLY_REFUSAL, error=f"refused: {refused}")
            return
        reason = explanation.replace("{result}", "").strip() or "no query over this database answers it"
        out.fail(f"I could not answer “{question}” from the database: {reason}", error="no query")

    @staticmethod
    def _succeed(out: Outcome[SQLEvidence], template: str, sql: str, result: QueryResult) -> None:
        out.answer = render_answer(template, result)
        out.evidence.update(
            {
                "sql": sql,
                "columns": list(result.columns),
                "rows": [list(map(_jsonable, r)) for r in result.rows[:10]],
                "row_count": len(result.rows),
                "truncated": result.truncated,
                "table": result.as_markdown(max_rows=10),
            }
        )
        out.entities = single_row_entities(result)


def _jsonable(v: Any) -> Any:
    """Evidence is JSON: PostgreSQL's Decimal becomes a float like SQLite's, dates text."""
    if isinstance(v, Decimal):
        return float(v)
    return v if isinstance(v, (int, float, str, type(None))) else str(v)
