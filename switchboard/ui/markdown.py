"""What the chat shows, as Markdown: the banner, the triage and specialist steps, the reply's
footer and a paused turn's review request. Pure text: no Chainlit context needed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from switchboard.services import Services
from tools import review
from tools.observability.records import ledger_cost


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL (a path): nothing to hide
        return re.sub(r"//([^:/@]+):[^@]+@", r"//\1:***@", url)


def banner_markdown(services: Services, policy: str | None) -> str:
    """The chat's opening message; ``policy`` is the session's routing policy (unset: the settings')."""
    s = services.settings
    models = (
        ", ".join(
            f"`{m.name}` ({m.tier}{', ' + m.provider if m.provider != 'llamacpp' else ', local llama.cpp'})"
            for m in services.registry.available()
        )
        or "none available"
    )
    db = _safe_url(s.database_url)
    lines = [
        f"**Switchboard** for {services.profile.name}: each question is triaged, split into parts and sent to "
        f"specialists (SQL over the {services.profile.noun}'s database, the help-center knowledge base, vision for "
        "images, a generalist), then answered in one reply. Open the steps to see who did what and what it cost.",
        "",
        f"- **Models:** {models}",
        f"- **Database:** `{Path(db.split(':///', 1)[-1]).name if db.startswith('sqlite') else db}` (read-only)",
        f"- **Knowledge base:** {_safe_url(s.chroma_url) if s.chroma_url else f'Chroma at `{s.chroma_dir}`'} "
        f"(collection `{s.collection}`)",
        f"- **Conversations:** {_safe_url(s.checkpoint_url) if s.checkpoint_url else f'`{s.checkpoint_sqlite_path}`'}",
        f"- **Routing policy:** {policy or s.routing_policy} (change it in the settings "
        "next to the message box)",
    ]
    if s.record_mode != "off":
        name = s.cassette_path.name if s.cassette_path else "(none)"
        lines.append(
            f"- **Model calls:** {s.record_mode} {'into' if s.record_mode == 'record' else 'from'} cassette `{name}`"
        )
    lines += ["", "Try *How many customers are from Brazil?*, *What's your refund policy?*, or attach a receipt image."]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ").strip()


def _secs(ms: float) -> str:
    return f"{ms / 1000:.1f} s"


def _usd(v: float) -> str:
    return f"${v:.5f}"


def triage_markdown(subtasks: list[dict[str, Any]], log_: dict[str, Any]) -> str:
    rows = ["| part | task | agent | confidence | why | top scores |", "|---|---|---|---|---|---|"]
    for s in subtasks:
        top = sorted((s.get("scores") or {}).items(), key=lambda kv: -kv[1])[:3]
        why = s.get("reason", "")
        if s.get("llm_asked"):
            why += " (LLM asked)"
        if s.get("depends_on"):
            why += f"; waits for {', '.join(s['depends_on'])}"
        if s.get("extract_only"):
            why += "; gathers evidence only"
        route = f" (route `{s['route']}`)" if s.get("route") and s["route"] != s["agent"] else ""
        rows.append(
            f"| {s['id']} | {_cell(s['task'])} | **{s['agent']}**{route} "
            f"| {s.get('confidence', 0):.2f} | {_cell(why)} | {', '.join(f'{k} {v:.2f}' for k, v in top)} |"
        )
    n = log_.get("llm_calls", 0)
    head = f"Split into {len(subtasks)} part{'s' if len(subtasks) != 1 else ''}; routing used {n} LLM call{'s' if n != 1 else ''}."
    return head + "\n\n" + "\n".join(rows)


def specialist_markdown(result: dict[str, Any], ledger: list[dict[str, Any]], raw: str) -> str:
    ev = result.get("evidence") or {}
    calls = [e for e in ledger if e.get("subtask_id") == result["subtask_id"]]
    model = calls[-1]["model"] if calls else ev.get("model")
    t_in, t_out = sum(e["tokens_in"] for e in calls), sum(e["tokens_out"] for e in calls)
    cost = ledger_cost(calls)
    facts = [
        f"model `{model}`" if model else "no model call",
        f"{t_in} in / {t_out} out tokens",
        _usd(cost),
        _secs(ev.get("elapsed_ms", 0)),
    ]
    if len(calls) > 1:
        facts.append(f"{len(calls)} calls")
    if cached := sum(1 for e in calls if e.get("cached")):
        facts.append("answered from cache" if cached == len(calls) else f"{cached} from cache")
    out = [f"**Task:** {result['task']}", "", " · ".join(facts), ""]
    for note in dict.fromkeys(e["note"] for e in calls if e.get("note")):
        out += [f"*Note:* {note}", ""]  # fallbacks, budget moves
    if not result.get("ok"):
        out += [f"**Could not answer:** {result.get('error') or result.get('answer')}", ""]
    failed = [a for a in ev.get("attempts") or [] if a.get("error")]
    for a in failed:
        out += [f"Rejected query ({_cell(a['error'])}):", f"```sql\n{a['sql']}\n```"]
    if ev.get("sql"):
        out += ["**SQL**", f"```sql\n{ev['sql']}\n```"]
    if ev.get("table"):
        more = f" ({ev.get('row_count')} rows, first shown)" if (ev.get("row_count") or 0) > 10 else ""
        out += [f"**Result**{more}", "", ev["table"], ""]
    if ev.get("image"):
        im = ev["image"]
        out += [
            f"**Image:** {im.get('name')} · {im.get('width')}×{im.get('height')} {im.get('format')}"
            + (" (downscaled)" if im.get("downscaled") else "")
        ]
    if ev.get("fields"):
        f = ev["fields"]
        out += ["", "**Read from the image**", "", "| field | value |", "|---|---|"]
        out += [f"| {k} | {_cell(f.get(k) or '(not found)')} |" for k in ("merchant", "date", "total", "currency")]
        if f.get("unreadable"):
            unreadable = f["unreadable"]
            if isinstance(unreadable, (list, tuple)):
                unreadable = ", ".join(map(str, unreadable))
            out += ["", f"Could not read: {_cell(unreadable)}"]
    if ev.get("ocr_text"):
        out += ["", "**Text on the image (OCR)**", f"```text\n{ev['ocr_text']}\n```"]
    if "citations" in ev:
        cites = ev.get("citations") or []
        out += ["**Citations**"] + ([f"{c['n']}. [{c['title']}]({c['url']})" for c in cites] or ["none"])
    if ev.get("retrieved"):
        out += ["", "**Retrieved passages**", "", "| title | score |", "|---|---|"]
        out += [f"| {_cell(h['title'])} | {h['score']:.3f} |" for h in ev["retrieved"]]
    out += ["", "**Answer**", "", result.get("answer", "")]
    if raw.strip() and raw.strip() != (result.get("answer") or "").strip():
        out += ["", "**Model output**", f"```text\n{raw.strip()}\n```"]
    return "\n".join(out)


def footer(cost: float, elapsed_s: float, ledger: list[dict[str, Any]]) -> str:
    n = len(ledger)
    cached = sum(1 for e in ledger if e.get("cached"))
    text = f"💲{cost:.5f} · {elapsed_s:.1f} s · {n} LLM call{'s' if n != 1 else ''}"
    return text + (f" ({cached} from cache)" if cached else "")


def review_markdown(pending: list[dict[str, Any]]) -> str:
    out = ["**Waiting for review**"]
    for r in pending:
        out += ["", review.describe(r)]
        if r.get("sql"):
            out += [f"```sql\n{r['sql']}\n```"]
        if r.get("kind") == review.COST:
            out += [f"Model `{r.get('model')}` · about {_usd(r.get('estimate_usd', 0.0))} · spent so far "
                    f"{_usd(r.get('spent_usd', 0.0))} · review limit ${r.get('limit_usd', 0.0):.2f}"]
    return "\n".join(out)

