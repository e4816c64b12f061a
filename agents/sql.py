"""The SQL specialist: a question in words -> one validated, read-only SELECT -> an answer.

One model call writes both the query and an answer sentence with a ``{result}`` slot, so a
count question costs one call, not two. The query is checked (sqlglot: a single SELECT, known
tables and columns) before it runs; a refusal or a database error goes back to the model for a
bounded number of retries.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from agents import prompts
from agents.base import Outcome, context_block, specialist
from graphs.state import Handoff
from switchboard.services import Services
from tools.database import QueryResult, SQLExecutionError
from tools.models import call_model
from tools.sql_guard import UnsafeSQL, check_read_only

MAX_ATTEMPTS = 3
_SQL_LINE = re.compile(r"^\s*SQL:\s*(.+?)\s*$", re.I | re.M)
_ANSWER_LINE = re.compile(r"^\s*ANSWER:\s*(.+?)\s*$", re.I | re.M)
_FENCE = re.compile(r"```(?:sql)?\s*(.+?)```", re.S | re.I)


def parse_reply(text: str) -> tuple[str, str]:
    """Split the model's two-line reply into (sql, answer template)."""
    m = _SQL_LINE.search(text)
    if m:
        sql = m.group(1)
    elif f := _FENCE.search(text):
        sql = f.group(1)
    else:
        sql = next((ln for ln in text.splitlines() if re.match(r"\s*(SELECT|WITH)\b", ln, re.I)), text)
    a = _ANSWER_LINE.search(text)
    return sql.strip().strip("`").rstrip(";").strip(), (a.group(1).strip() if a else "")


def render_answer(template: str, result: QueryResult) -> str:
    """Fill the model's answer sentence with the real result (never a number the model made up).

    The template is only trusted where it has a ``{result}`` slot: a sentence written before the
    query ran cannot know whether anything matched, so an empty result always says so plainly.
    """
    rows = result.rows
    if not rows:
        return "I found no matching records in the database."
    slot = "{result}" in template
    if len(rows) == 1 and len(rows[0]) == 1:
        value = rows[0][0]
        value = f"{value:,.2f}" if isinstance(value, float) else str(value)
        return template.replace("{result}", value) if slot else f"The database says: {value}."
    if len(result.columns) <= 2 and len(rows) <= 10:
        listed = ", ".join(" ".join(str(v) for v in r) for r in rows)
        return template.replace("{result}", listed) if slot else f"The database returned: {listed}."
    more = " (first rows shown)" if result.truncated or len(rows) > 10 else ""
    return f"The database returned {len(rows)} row{'s' if len(rows) != 1 else ''}{more}:\n\n{result.as_markdown(max_rows=10)}"


def single_row_entities(result: QueryResult) -> dict[str, str]:
    """A one-row answer establishes facts later turns can refer to (e.g. the customer's name)."""
    if len(result.rows) != 1 or len(result.columns) < 2:
        return {}
    row = dict(zip(result.columns, result.rows[0], strict=True))
    ents = {k: str(v) for k, v in row.items() if v is not None and len(str(v)) < 80}
    if "FirstName" in row and "LastName" in row:
        ents = {"person": f"{row['FirstName']} {row['LastName']}", **ents}
    return ents


class SQLAgent:
    def __init__(self, services: Services) -> None:
        self.services = services

    def schema_text(self, question: str) -> str:
        return self.services.db.describe(None, sample_rows=0, compact=True)

    async def __call__(self, handoff: Handoff) -> dict[str, Any]:
        async with specialist("sql", handoff) as out:
            await self._answer(handoff, out)
        return out.update()

    async def _answer(self, handoff: Handoff, out: Outcome) -> None:
        db = self.services.db
        question = out.subtask["task"]
        handle = self.services.registry.for_agent("sql", handoff["policy"])
        msgs: list[BaseMessage] = [
            SystemMessage(prompts.SQL_SYSTEM.format(schema=self.schema_text(question))),
            HumanMessage(prompts.SQL_USER.format(context=context_block(handoff), question=question)),
        ]
        attempts: list[dict[str, str]] = []
        out.evidence.update({"model": handle.spec.name, "attempts": attempts})
        for _ in range(MAX_ATTEMPTS):
            reply, entry = await call_model(
                handle, msgs, agent="sql", task=question, max_tokens=160, subtask_id=out.subtask["id"]
            )
            out.ledger.append(entry)
            sql, template = parse_reply(str(reply.content))
            try:
                sql = check_read_only(sql, dialect=db.dialect)
                problems = db.validate(sql)
                if problems:
                    raise SQLExecutionError("; ".join(problems), sql)
                result = db.run(sql, max_rows=50)
            except (UnsafeSQL, SQLExecutionError) as exc:
                error = getattr(exc, "reason", None) or str(exc)
                attempts.append({"sql": sql, "error": error})
                msgs += [AIMessage(str(reply.content)), HumanMessage(prompts.SQL_RETRY.format(error=error))]
                continue
            attempts.append({"sql": sql, "error": ""})
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
            return
        last = attempts[-1]["error"] if attempts else "no query"
        out.fail(
            f"I could not build a working database query for “{question}” "
            f"after {MAX_ATTEMPTS} attempts (last problem: {last}).",
            error=last,
        )


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, type(None))) else str(v)
