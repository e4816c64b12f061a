"""A support bot for a chat platform, answering through Switchboard's HTTP API.

The platform (Slack, Zendesk, a website widget...) posts each customer message to ``/webhook``
as ``{"conversation_id": "...", "text": "..."}``; the bot forwards it with the official
``openai`` client and returns ``{"conversation_id": "...", "text": "<answer>"}``. The bot keeps no
state: Switchboard continues the conversation named by ``X-Conversation-Id``.

    SWITCHBOARD_API_KEYS=change-me uv run switchboard serve --port 8000
    SWITCHBOARD_URL=http://127.0.0.1:8000/v1 SWITCHBOARD_API_KEY=change-me \\
        BOT_WEBHOOK_SECRET=s3cret uv run python examples/webhook_bot.py          # listens on :8080
    curl -s localhost:8080/webhook -H 'X-Webhook-Secret: s3cret' \\
        -d '{"conversation_id": "shop-1", "text": "How many customers are from Brazil?"}'

Real platforms sign their webhooks; check that signature where ``X-Webhook-Secret`` is checked.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re

import openai
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

log = logging.getLogger("webhook_bot")

# Switchboard accepts these conversation ids as they are; other platform ids are hashed to one.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
APOLOGY = "Sorry, I can't answer right now. Please try again in a minute."


class Incoming(BaseModel):
    conversation_id: str = Field(min_length=1, max_length=512)
    text: str = Field(min_length=1, max_length=4000)


class Outgoing(BaseModel):
    conversation_id: str
    text: str


def thread_for(conversation_id: str) -> str:
    """The Switchboard conversation for a platform conversation (stable, valid as a header)."""
    if _SAFE_ID.fullmatch(conversation_id):
        return conversation_id
    return "bot-" + hashlib.sha256(conversation_id.encode("utf-8")).hexdigest()[:40]


def create_bot(base_url: str, api_key: str, *, webhook_secret: str | None = None,
               model: str = "switchboard") -> FastAPI:
    """The webhook app. ``model`` is Switchboard's routing policy (``switchboard`` = its default)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=300, max_retries=1)
    app = FastAPI(title="Switchboard webhook bot")

    @app.post("/webhook")
    async def webhook(msg: Incoming, x_webhook_secret: str = Header(default="")) -> Outgoing:
        if webhook_secret and not hmac.compare_digest(x_webhook_secret.encode(), webhook_secret.encode()):
            raise HTTPException(status_code=401, detail="bad webhook secret")
        try:
            completion = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": msg.text}],
                extra_headers={"X-Conversation-Id": thread_for(msg.conversation_id)},
            )
        except openai.APIError as exc:  # Switchboard down or refusing: the customer still gets a reply
            log.error("Switchboard call failed: %s", exc)
            return Outgoing(conversation_id=msg.conversation_id, text=APOLOGY)
        return Outgoing(conversation_id=msg.conversation_id, text=completion.choices[0].message.content or "")

    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    api_key = os.environ.get("SWITCHBOARD_API_KEY")
    if not api_key:
        raise SystemExit("set SWITCHBOARD_API_KEY to one of the keys in the server's SWITCHBOARD_API_KEYS")
    app = create_bot(
        os.environ.get("SWITCHBOARD_URL", "http://127.0.0.1:8000/v1"),
        api_key,
        webhook_secret=os.environ.get("BOT_WEBHOOK_SECRET") or None,
    )
    uvicorn.run(app, host=os.environ.get("BOT_HOST", "127.0.0.1"), port=int(os.environ.get("BOT_PORT", "8080")))


if __name__ == "__main__":
    main()
