"""The HTTP door: an OpenAI-compatible chat API over the support graph.

    SWITCHBOARD_API_KEYS=key1,key2 switchboard serve --host 127.0.0.1 --port 8000

Any OpenAI client can talk to it (``base_url=http://host:8000/v1``, ``api_key=key1``):

* ``POST /v1/chat/completions`` — the **last user message is the turn**; earlier messages in the
  request are ignored because the server keeps the conversation itself (checkpointer). The
  conversation is named by the ``X-Conversation-Id`` header, else the ``user`` field (as a keyed
  hash: ``user`` is often an e-mail address), else a new id; the id is always returned in the ``X-Conversation-Id`` response header (and in the body's
  ``switchboard`` block). ``model`` selects the routing policy: ``switchboard`` (the server's
  default), ``cost-saver``, ``balanced`` or ``best-quality``; anything else is a 404
  ``model_not_found``, so a misconfigured client fails loudly instead of silently getting a
  different model. Sampling parameters (temperature, max_tokens, tools...) are ignored.
  One image per turn may be sent as an ``image_url`` part with a ``data:`` URL (never fetched
  from the web); it goes to the vision specialist, which validates it and explains a bad upload.
  ``stream: true`` sends ``chat.completion.chunk`` events ending with ``data: [DONE]``: a role
  chunk at once, then the answer as it is produced (a one-part turn: the specialist's own tokens;
  several parts: each part once it and the parts before it are done), keep-alive comments while
  nothing is; the streamed text equals the non-streamed answer. A SQL part's sentence needs its
  query's result, so it arrives whole. A client that disconnects cancels the turn.
* ``GET /v1/threads/{id}`` — the conversation: messages, and per turn its routes and costs.
* Human review (``tools/review.py``): a turn that pauses for a reviewer (a query reading sensitive
  columns, a heavy model call past the review cost) answers with what it waits for, and its
  ``switchboard`` block lists ``pending_review`` (id, kind, question, sql/columns or cost).
  ``GET /v1/threads/{id}/review`` lists what is pending; ``POST /v1/threads/{id}/review`` with
  ``{"action": "approve"|"reject"|"edit", "sql": ..., "interrupt_id": ...}`` continues the turn
  and answers like a chat completion. A new message on a paused conversation is a 409.
* ``GET /v1/models`` — the accepted ``model`` names. ``GET /healthz`` — liveness, no key needed.
* ``GET /metrics`` — Prometheus metrics (``tools/observability/metrics.py``), no key needed like ``/healthz``:
  counts, latencies, tokens and costs, never conversation content.

Every ``/v1`` call needs ``Authorization: Bearer <key>`` with a key from ``SWITCHBOARD_API_KEYS``
(comma-separated ``name=key`` entries; a plain ``key`` is named ``key-<first 12 hex of its
SHA-256>``) or from the file ``SWITCHBOARD_API_KEYS_FILE`` (one ``name=key`` a line, ``#``
comments). A key's name is its principal (``switchboard/access.py``): a conversation belongs to
the principal that started it, and another principal's conversation is a 404 like a missing one
(admins, ``SWITCHBOARD_ADMINS``, may read every conversation). Deciding a review needs a reviewer
(``SWITCHBOARD_REVIEWERS``) who does not own the conversation (403 otherwise); reviewers see
pending reviews with ``GET /v1/reviews`` and ``GET /v1/threads/{id}/review``, without being able to
continue or read the conversation. Without keys the server refuses to start unless
``--insecure-no-auth`` is given (then everyone is the single principal ``anonymous``).
Errors always use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; internal
errors are logged here and answered with a generic message, never a stack trace.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import signal
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from graphs.support import SPECIALISTS
from switchboard import lifecycle
from switchboard.access import HTTP, Principal, ReviewForbidden, ThreadNotFound
from switchboard.api import (
    RUNTIME_UNAVAILABLE,
    ConversationBusy,
    NoPendingReview,
    ReviewError,
    ReviewPending,
    Switchboard,
    TurnResult,
    collect,
    report_subtasks,
)
from switchboard.settings import Settings
from tools import review as review_tools
from tools.models.values import POLICIES
from tools.observability import metrics
from tools.observability.records import ledger_cost
from tools.vision.images import MAX_BYTES as MAX_IMAGE_BYTES
from tools.vision.images import ImageRejected, sniff_upload

LABELS = {cls.name: cls.label for cls in SPECIALISTS}  # how a combined answer introduces each part
log = logging.getLogger("switchboard.server")
BodyT = TypeVar("BodyT", bound=BaseModel)

CONVERSATION_HEADER = "X-Conversation-Id"
DEFAULT_MODEL = "switchboard"
# Asked when a user sends only an image: the vision specialist then says what it reads.
IMAGE_ONLY_QUESTION = "What does this image show?"
KEEPALIVE_SECONDS = 10.0
READY_TIMEOUT_S = 2.0
TURN_FAILED = "The turn failed on the server. Try again; if it persists, the details are in the server log."
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=[^;,]*)*;base64,(?P<data>.*)", re.S)
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif",
               "image/bmp": ".bmp", "image/tiff": ".tiff"}
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


class ServerSettings(BaseSettings):
    """The HTTP server's own settings, from ``SWITCHBOARD_*`` variables or ``.env`` like ``Settings``.

    Kept apart from ``Settings`` because only this door needs them. Limits are bytes of the raw
    request body: text-only requests are small, so a large one is an error; a request carrying
    an image may be larger, enough for a ``MAX_IMAGE_BYTES`` image in base64 plus the text.
    """

    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", env_file=".env", extra="ignore", frozen=True)

    api_keys: SecretStr | None = None  # comma-separated: name=key (a plain key is named key-<sha256 prefix>)
    api_keys_file: Path | None = None  # one name=key a line (# comments); added to api_keys
    max_request_bytes: int = 1024 * 1024
    max_image_request_bytes: int = 14 * 1024 * 1024
    max_image_bytes: int = MAX_IMAGE_BYTES
    # keys the hash that turns the ``user`` field into a conversation id; unset: a random key kept
    # in the data dir (set it when several servers with their own data dirs share conversations)
    user_id_key: SecretStr | None = None

    def key_list(self) -> list[str]:
        """The configured entries (``name=key`` or ``key``), from the variable then the file."""
        raw = self.api_keys.get_secret_value() if self.api_keys else ""
        entries = [k.strip() for k in raw.split(",") if k.strip()]
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            entries += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return entries


_KEY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._@-]{0,63}")


def key_name(key: str) -> str:
    """A plain key's stable, non-secret principal name."""
    return "key-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def parse_key_entries(entries: Sequence[str]) -> list[tuple[str, str]]:
    """``name=key`` or a plain ``key`` -> ``(principal, key)``. An entry is named only when the text
    before its first ``=`` is a name and the rest does not start with ``=`` (base64 padding)."""
    out = []
    for entry in entries:
        name, sep, key = entry.strip().partition("=")
        if sep and _KEY_NAME.fullmatch(name.strip()) and key.strip() and not key.startswith("="):
            out.append((name.strip(), key.strip()))
        elif entry.strip():
            out.append((key_name(entry.strip()), entry.strip()))
    return out


class MissingAPIKeys(RuntimeError):
    """The server was asked to start without API keys and without ``--insecure-no-auth``."""


class APIError(Exception):
    """An error answered to the client as is, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.code, self.param, self.headers = code, param, headers


def error_response(status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------
# the request body (only what the server uses; unknown fields are ignored like OpenAI's SDKs do)
# ---------------------------------------------------------------------------------------------


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = DEFAULT_MODEL
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


@dataclass(frozen=True)
class UserTurn:
    """What the graph gets from a request: the question and at most one decoded image."""

    text: str
    image: bytes | None = None
    image_mime: str | None = None


# ---------------------------------------------------------------------------------------------
# authentication
# ---------------------------------------------------------------------------------------------


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def key_matches(candidate: str, key_digests: Sequence[bytes]) -> bool:
    """Constant-time check against every key: hashing first makes all comparisons equal-length,
    and no early exit means the time taken does not reveal which key (if any) matched."""
    return key_owner(candidate, [("", d) for d in key_digests]) is not None


def key_owner(candidate: str, named_digests: Sequence[tuple[str, bytes]]) -> str | None:
    """The name of the key that matches (constant-time over all keys, like :func:`key_matches`)."""
    probe = _digest(candidate)
    found: str | None = None
    for name, digest in named_digests:
        if hmac.compare_digest(probe, digest) and found is None:
            found = name
    return found


ANONYMOUS = "anonymous"  # everyone, when the server runs with --insecure-no-auth


def make_auth_dependency(keys: Sequence[tuple[str, str]] | None, settings: Settings | None = None):
    """A FastAPI dependency that admits ``Authorization: Bearer <key>`` and returns the key's
    :class:`Principal` (``keys=None``: no auth, everyone is the single-user ``anonymous``)."""
    settings = settings or Settings()
    named = [(name, _digest(k)) for name, k in keys] if keys is not None else None
    principals = {name: Principal.named(name, HTTP, settings) for name, _ in keys or ()}
    nobody = Principal.named(ANONYMOUS, HTTP, settings, single_user_default=True)

    async def require_api_key(request: Request) -> Principal:
        if named is None:
            request.state.principal = nobody
            return nobody
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        name = key_owner(token.strip(), named) if scheme.lower() == "bearer" and token.strip() else None
        if name is None:
            request.state.principal = None
            raise APIError(
                401,
                "Missing or invalid API key. Send one of the keys in SWITCHBOARD_API_KEYS as "
                "'Authorization: Bearer <key>'.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request.state.principal = principals[name]
        return principals[name]

    return require_api_key


# ---------------------------------------------------------------------------------------------
# reading and interpreting a chat-completions request
# ---------------------------------------------------------------------------------------------


def _too_large(limit: int, what: str) -> APIError:
    return APIError(413, f"{what} is larger than the limit of {limit} bytes.", code="request_too_large")


async def read_limited_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes: a declared or actual larger body is refused before it is
    buffered, so a client cannot make the server hold more than the limit in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, "The request body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit, "The request body")
    return bytes(body)


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``messages.0.content`` from a pydantic location, without its union-branch labels."""
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and (p == "str" or "[" in p)))


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """A short message naming the offending fields (never echoing their values)."""
    problems: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        problems.setdefault(_field_path(error["loc"]) or "body", error["msg"])
    listed = [f"{where}: {msg}" for where, msg in list(problems.items())[:3]]
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "Invalid request body: " + "; ".join(listed) + more, next(iter(problems), None)


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    return parse_body(body, ChatCompletionRequest)


def parse_body(body: bytes, model: type[BodyT]) -> BodyT:
    """A JSON request body as ``model``; every way it can be wrong is a 400 in OpenAI's shape."""
    try:
        payload = json.loads(body)
    except UnicodeDecodeError as exc:
        raise APIError(400, "The request body is not UTF-8 JSON.", code="invalid_json") from exc
    except json.JSONDecodeError as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).",
                       code="invalid_json") from exc
    except RecursionError as exc:  # ~1,000 nested arrays/objects: the decoder's recursion limit
        raise APIError(400, "The request body is nested too deeply.", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_request_body")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        message, param = _validation_message(exc)
        raise APIError(400, message, code="invalid_request_body", param=param) from exc
    except RecursionError as exc:
        raise APIError(400, "The request body is nested too deeply.", code="invalid_request_body") from exc


def policy_for(model: str, default: str) -> str:
    """``switchboard`` means the server's default routing policy; a policy name selects it."""
    name = model.strip()
    if name == DEFAULT_MODEL:
        return default
    if name in POLICIES:
        return name
    raise APIError(
        404,
        f"Unknown model {model!r}. Use {DEFAULT_MODEL!r} (the server's routing policy, {default}) "
        f"or a routing policy: {', '.join(POLICIES)}.",
        code="model_not_found",
        param="model",
    )


def valid_conversation_id(value: str, param: str) -> str:
    """Conversation ids become checkpoint keys and response headers: keep them plain."""
    if not _CONVERSATION_ID.fullmatch(value):
        raise APIError(400, f"{param} must be 1-128 characters: letters, digits and . _ : @ - "
                       "(starting with a letter or digit).", code="invalid_conversation_id", param=param)
    return value


def conversation_id(header: str | None, user: str | None, user_key: bytes) -> str:
    """The thread a request continues: the header, else the ``user`` field, else a new one.

    ``user`` is often an e-mail address or a name: the thread id (stored in checkpoints, the audit
    trail and the ledger, sent back in ``X-Conversation-Id``) is a keyed hash of it, so the same
    user always continues the same conversation but no id carries personal data or can be
    recomputed from a guessed address without the key.
    """
    if header:
        return valid_conversation_id(header, CONVERSATION_HEADER)
    if user:
        return user_conversation_id(user, user_key)
    return f"conv-{uuid.uuid4().hex}"


def user_conversation_id(user: str, key: bytes) -> str:
    """``user-`` and 128 bits of HMAC-SHA256(key, user)."""
    return "user-" + hmac.new(key, user.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def user_id_key(server: ServerSettings, data_dir: Path) -> bytes:
    """The key for :func:`user_conversation_id`: ``SWITCHBOARD_USER_ID_KEY``, else a random key
    created once in ``data_dir/user-id.key`` (owner-only), so ids survive restarts."""
    if server.user_id_key is not None:
        return server.user_id_key.get_secret_value().encode("utf-8")
    path = Path(data_dir) / "user-id.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32))
    return path.read_bytes().strip()


def decode_image(url: str, max_bytes: int) -> tuple[bytes, str | None]:
    """Decode a ``data:`` URL; the MIME type returned is the one its content shows (the URL's own is
    ignored), and anything but a supported raster image is refused. Remote URLs are refused: the
    server never fetches on a client's behalf."""
    match = _DATA_URL.fullmatch(url.strip())
    if not match:
        raise APIError(400, "image_url must be a base64 data: URL (data:image/png;base64,...); "
                       "the server does not fetch images from the web.", code="invalid_image_url",
                       param="messages.content.image_url")
    data = match["data"]
    if len(data) * 3 // 4 > max_bytes + 3:
        raise _too_large(max_bytes, "The image")
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", data), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, "image_url is not valid base64.", code="invalid_image_url",
                       param="messages.content.image_url") from exc
    if len(raw) > max_bytes:
        raise _too_large(max_bytes, "The image")
    try:  # typed by its bytes, never by the client's MIME type: only rasters the vision path reads
        kind = sniff_upload(raw, "The attached file")
    except ImageRejected as exc:
        raise APIError(400, exc.message, code="unsupported_image", param="messages.content.image_url") from exc
    return raw, kind.mime


def user_turn(messages: Sequence[ChatMessage], max_image_bytes: int) -> UserTurn:
    """The last user message as a turn: its text parts joined, and its image if any."""
    last = next((m for m in reversed(messages) if m.role == "user"), None)
    if last is None:
        raise APIError(400, "messages must contain a user message: the last one is the turn.",
                       code="invalid_request_body", param="messages")
    if isinstance(last.content, str) or last.content is None:
        texts, images = [last.content or ""], []
    else:
        texts = [p.text for p in last.content if isinstance(p, TextPart)]
        images = [p for p in last.content if isinstance(p, ImagePart)]
    if len(images) > 1:
        raise APIError(400, "Send at most one image per turn.", code="too_many_images", param="messages")
    text = "\n".join(t for t in texts if t.strip()).strip()
    if not images:
        if not text:
            raise APIError(400, "The last user message has no text.", code="invalid_request_body", param="messages")
        return UserTurn(text)
    raw, mime = decode_image(images[0].image_url.url, max_image_bytes)
    return UserTurn(text or IMAGE_ONLY_QUESTION, raw, mime)


_BASE64_RUN = re.compile(rb";base64,[A-Za-z0-9+/=\\]*")


def _image_payload_bytes(body: bytes) -> int:
    """Length of the longest base64 run after ``;base64,`` in the raw body: what an image may add
    to the text limit. Only the larger image limit is allowed for it, and only when it is there,
    so a big text-only body is refused (413) before any JSON parsing."""
    return max((len(m) for m in _BASE64_RUN.findall(body)), default=0)


@dataclass(frozen=True)
class TurnRequest:
    """A checked chat-completions request: everything needed to run and answer the turn."""

    turn: UserTurn
    conversation: str
    policy: str
    model: str
    stream: bool
    include_usage: bool
    completion_id: str


async def read_turn_request(request: Request, server: ServerSettings, default_policy: str) -> TurnRequest:
    """Read, parse and check a request; every problem is an :class:`APIError` naming it."""
    body = await read_limited_body(request, max(server.max_request_bytes, server.max_image_request_bytes))
    if len(body) - _image_payload_bytes(body) > server.max_request_bytes:  # before parsing: no image pays for it
        raise _too_large(server.max_request_bytes, "A request without an image")
    req = parse_chat_request(body)
    turn = user_turn(req.messages, server.max_image_bytes)
    if turn.image is None and len(body) > server.max_request_bytes:
        raise _too_large(server.max_request_bytes, "A request without an image")
    return TurnRequest(
        turn=turn,
        conversation=conversation_id(request.headers.get(CONVERSATION_HEADER), req.user, request.app.state.user_key),
        policy=policy_for(req.model, default_policy),
        model=req.model,
        stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        completion_id=f"chatcmpl-{uuid.uuid4().hex}",
    )


# ---------------------------------------------------------------------------------------------
# running a turn
# ---------------------------------------------------------------------------------------------


def _save_upload(uploads: Path, data: bytes, mime: str | None) -> Path:
    """Write an upload under a fresh random folder; the client's bytes never choose the name."""
    folder = uploads / uuid.uuid4().hex
    folder.mkdir(parents=True, mode=0o700)
    path = folder / f"image{_EXTENSIONS.get(mime or '', '')}"
    path.write_bytes(data)
    return path


async def turn_events(board: Switchboard, turn: UserTurn, conversation: str, policy: str,
                      principal: Principal | None = None, *,
                      progress: bool = True) -> AsyncGenerator[lifecycle.Event, None]:
    """One turn's events (``Switchboard.stream``: one turn per conversation at a time, on every
    replica). The upload lives only while the turn runs (it may be a private receipt)."""
    upload = None
    if turn.image is not None:
        uploads = board.services.settings.data_dir / "uploads"
        upload = await asyncio.to_thread(_save_upload, uploads, turn.image, turn.image_mime)
    try:
        async for event in board.stream(turn.text, thread_id=conversation, image=upload, policy=policy,
                                        principal=principal, progress=progress):
            yield event
    finally:
        if upload is not None:
            await asyncio.to_thread(shutil.rmtree, upload.parent, True)


async def run_turn(board: Switchboard, turn: UserTurn, conversation: str, policy: str,
                   principal: Principal | None = None) -> TurnResult:
    """Answer one turn: :func:`turn_events`, collected."""
    return await collect(turn_events(board, turn, conversation, policy, principal, progress=False))


def route_views(subtasks: list[dict[str, Any]], ledger: list[dict[str, Any]],
                results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where each part of a turn went and what it cost."""
    routes = {s["id"]: s.get("route") for s in subtasks}
    return [
        {"agent": r.agent, "route": routes.get(r.id), "task": r.task, "model": r.model, "ok": r.ok,
         "tokens_in": r.tokens_in, "tokens_out": r.tokens_out, "cost_usd": r.cost_usd, "latency_ms": r.latency_ms}
        for r in report_subtasks({"subtasks": subtasks, "ledger": ledger, "results": results})
    ]


def usage(ledger: list[dict[str, Any]]) -> dict[str, int]:
    prompt = sum(e.get("tokens_in", 0) for e in ledger)
    completion = sum(e.get("tokens_out", 0) for e in ledger)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def switchboard_block(result: TurnResult) -> dict[str, Any]:
    """The non-OpenAI extras of a reply: conversation id, routes and cost (clients may ignore it)."""
    return {
        "conversation_id": result.thread_id,
        "routes": route_views(result.triage.get("subtasks") or [], result.ledger, result.results),
        "cost_usd": result.cost_usd,
        "llm_calls": len(result.ledger),
        "latency_ms": result.latency_ms,
        "pending_review": result.pending_review,  # a paused turn: what awaits POST /v1/threads/{id}/review
    }


def completion_body(result: TurnResult, completion_id: str, model: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": usage(result.ledger),
        "switchboard": switchboard_block(result),
    }


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _sse_error(message: str, code: str = "internal_error") -> str:
    """An error event in OpenAI's shape, and the end of the stream."""
    return _sse({"error": {"message": message, "type": "server_error", "param": None, "code": code}}) + "data: [DONE]\n\n"


def _chunk(completion_id: str, model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


_STOPPING: set[asyncio.Future[None]] = set()  # turns being stopped (a task needs a reference until it ends)


async def _stop_turn(step: asyncio.Future[Any] | None, events: AsyncGenerator[lifecycle.Event, None],
                     on_stop: Any) -> None:
    """Cancel a streamed turn and close it (``on_stop``). A pending ``anext`` is running the events
    generator: it has to end (cancelled, which cancels the model calls) before the generator can
    be closed, or ``aclose`` fails with "asynchronous generator is already running"."""
    if step is not None and not step.done():
        step.cancel()
        await asyncio.wait({step})
    await events.aclose()
    await on_stop()


async def stream_turn(events: AsyncGenerator[lifecycle.Event, None], completion_id: str, model: str,
                      include_usage: bool, on_stop: Any) -> AsyncIterator[str]:
    """SSE for one turn: a role chunk at once, then the answer's text as it is produced (keep-alive
    comments while nothing is), then a final chunk with the ``switchboard`` block. A client that
    goes away cancels the turn (its model calls stop) and ``on_stop()`` closes it with what finished."""
    yield _sse(_chunk(completion_id, model, {"role": "assistant", "content": ""}))
    text = lifecycle.TextStream(LABELS)
    result: TurnResult | None = None
    failure: lifecycle.Failed | None = None
    iterator = events
    step: asyncio.Future[lifecycle.Event] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(iterator))
            try:
                while not (await asyncio.wait({step}, timeout=KEEPALIVE_SECONDS))[0]:
                    yield ": keep-alive\n\n"
                event = step.result()
            except StopAsyncIteration:
                break
            finally:
                step.cancel()
            if isinstance(event, (lifecycle.Answer, lifecycle.Paused)):
                if not getattr(event, "earlier", False):
                    result = event.turn
                continue
            if isinstance(event, lifecycle.Failed):
                failure = event
                continue
            if isinstance(event, lifecycle.Notice):
                continue
            if delta := text.feed(event):
                yield _sse(_chunk(completion_id, model, {"content": delta}))
    except asyncio.CancelledError:  # the client went away: stop the turn's model calls, keep what finished
        # in a task of its own: the server's cancel scope cancels every await of this one again
        stopping = asyncio.ensure_future(_stop_turn(step, iterator, on_stop))
        _STOPPING.add(stopping)
        stopping.add_done_callback(_STOPPING.discard)
        await asyncio.shield(stopping)
        raise
    except ConversationBusy as exc:  # the headers are sent: the 409 of a non-streamed request, as an event
        yield _sse_error(str(exc), "conversation_busy")
        return
    except Exception:  # noqa: BLE001 - logged; the client gets OpenAI's error shape, never a trace
        log.exception("streamed turn %s failed", completion_id)
        yield _sse_error(TURN_FAILED)
        return
    if failure is not None:  # no model could run: an error event in OpenAI's shape, with the cause and the fix
        yield _sse_error(failure.message, failure.code)
        return
    if result is None:
        yield _sse_error(TURN_FAILED)
        return
    if rest := text.rest(result.answer):
        yield _sse(_chunk(completion_id, model, {"content": rest}))
    final = _chunk(completion_id, model, {}, "stop")
    final["switchboard"] = switchboard_block(result)
    yield _sse(final)
    if include_usage:
        yield _sse({**_chunk(completion_id, model, {}), "choices": [], "usage": usage(result.ledger)})
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------------------------------------
# conversation history
# ---------------------------------------------------------------------------------------------


def _message_view(message: Any) -> dict[str, Any]:
    return {"role": _ROLES.get(getattr(message, "type", ""), getattr(message, "type", "unknown")),
            "content": message.content}


def _turn_view(values: dict[str, Any], created_at: str | None) -> dict[str, Any]:
    ledger = values.get("ledger") or []
    return {
        "question": values.get("question", ""),
        "answer": values.get("answer", ""),
        "created_at": created_at,
        "routes": route_views(values.get("subtasks") or [], ledger, values.get("results") or []),
        "cost_usd": ledger_cost(ledger),
        "llm_calls": len(ledger),
    }


async def thread_history(graph: Any, conversation: str, limit: int) -> dict[str, Any] | None:
    """A conversation from its checkpoints. Each finished turn ends in a checkpoint with nothing
    left to run; that checkpoint still holds the turn's subtasks and ledger, so every turn's routes
    and costs are available without keeping a growing per-turn ledger in the state."""
    config = {"configurable": {"thread_id": conversation}}
    current = await graph.aget_state(config)
    if not current.values:
        return None
    turns: list[dict[str, Any]] = []
    has_more = False
    async for snapshot in graph.aget_state_history(config):
        if snapshot.next or "answer" not in snapshot.values:
            continue  # mid-turn checkpoint, or a turn that did not finish
        if len(turns) == limit:
            has_more = True
            break
        turns.append(_turn_view(snapshot.values, snapshot.created_at))
    turns.reverse()
    return {
        "object": "thread",
        "id": conversation,
        "messages": [_message_view(m) for m in current.values.get("messages") or []],
        "summary": current.values.get("summary", ""),
        "turns": turns,
        "has_more": has_more,
        "cost_usd": round(sum(t["cost_usd"] for t in turns), 8),
    }


# ---------------------------------------------------------------------------------------------
# human review: a paused turn, and the decision that continues it
# ---------------------------------------------------------------------------------------------


class ReviewRequest(BaseModel):
    """``POST /v1/threads/{id}/review``: a reviewer's decision (``tools/review.py``)."""

    model_config = ConfigDict(extra="ignore")
    action: Literal["approve", "reject", "edit"]
    sql: str | None = None  # an edit's query (an approval runs the query that was shown)
    interrupt_id: str | None = None  # which review, when several are pending (default: all)


def not_found(conversation: str) -> APIError:
    """Missing, or another principal's: the same answer, so ids cannot be probed."""
    return APIError(404, f"No conversation with id {conversation!r}.", code="thread_not_found")


def busy(exc: ConversationBusy) -> APIError:
    """A second message for a conversation still answering another (on any replica)."""
    return APIError(409, f"{str(exc)[0].upper()}{str(exc)[1:]}.", code="conversation_busy",
                    headers={"Retry-After": "5", CONVERSATION_HEADER: exc.thread_id})


def forbidden(exc: ReviewForbidden) -> APIError:
    return APIError(403, str(exc), type="permission_error", code="review_not_allowed")


def review_pending_error(exc: ReviewPending) -> APIError:
    return APIError(409, f"Conversation {exc.thread_id!r} is waiting for review: decide it with POST "
                    f"/v1/threads/{exc.thread_id}/review before sending another message.", code="review_pending")


# ---------------------------------------------------------------------------------------------
# the application
# ---------------------------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape; unexpected ones without any internals."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, type=exc.type, code=exc.code, param=exc.param,
                              headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return error_response(422, f"Invalid request: {where}: {first['msg']}", code="invalid_request", param=where)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), code=code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "Internal server error. The details are in the server log.",
                              type="server_error", code="internal_error")


def _ping_store(board: Switchboard) -> None:
    """One round trip to the database the audit trail shares with the checkpointer."""
    with board.services.audit.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")


# `switchboard serve --workers N` passes --insecure-no-auth to its worker processes this way
INSECURE_ENV = "SWITCHBOARD_SERVE_INSECURE_NO_AUTH"


DRAINING = threading.Event()  # set on SIGTERM: readiness says 503 while in-flight turns finish


def _drain_on_sigterm() -> None:
    """Chain a SIGTERM handler that sets :data:`DRAINING` before uvicorn's own, which closes the
    listener and waits for in-flight requests. Called while uvicorn builds the app, after it
    installed its handlers (it puts its saved ones back at exit)."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        DRAINING.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)


def app_from_env() -> FastAPI:
    """The app of one worker process of ``switchboard serve`` (uvicorn's factory): everything
    comes from the environment, which the workers inherit from the command."""
    from tools.observability.redaction import install_log_redaction

    logging.basicConfig(level=os.environ.get("SWITCHBOARD_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    install_log_redaction()  # each worker is a fresh process: no e-mail, phone or key reaches its log
    if threading.current_thread() is threading.main_thread():
        _drain_on_sigterm()
    return create_app(Settings(), insecure_no_auth=os.environ.get(INSECURE_ENV) == "1")


def resolve_api_keys(api_keys: Sequence[str] | None, server: ServerSettings,
                     insecure_no_auth: bool) -> list[tuple[str, str]] | None:
    """The ``(principal, key)`` pairs to require, or ``None`` for no authentication (only when
    explicitly asked)."""
    keys = parse_key_entries([k for k in (api_keys if api_keys is not None else server.key_list()) if k])
    if len({name for name, _ in keys}) != len(keys):
        raise ValueError("SWITCHBOARD_API_KEYS: two keys have the same name")
    if keys:
        log.info("API key principals: %s", ", ".join(name for name, _ in keys))
        return keys
    if insecure_no_auth:
        log.warning("the HTTP API is running WITHOUT authentication (--insecure-no-auth): "
                    "anyone who can reach it can use it and read every conversation")
        return None
    raise MissingAPIKeys(
        "SWITCHBOARD_API_KEYS is not set, so the HTTP API will not start: set it to one or more "
        "comma-separated keys (clients send 'Authorization: Bearer <key>'), or pass --insecure-no-auth "
        "to run without authentication on a trusted machine."
    )


def create_app(
    settings: Settings | None = None,
    switchboard: Switchboard | None = None,
    *,
    api_keys: Sequence[str] | None = None,
    insecure_no_auth: bool = False,
    server_settings: ServerSettings | None = None,
) -> FastAPI:
    """Build the HTTP app. Pass ``switchboard`` to serve an already open one (tests inject scripted
    services this way; the caller then owns its lifetime); otherwise the app opens its own from
    ``settings`` for as long as it runs. ``api_keys`` defaults to ``SWITCHBOARD_API_KEYS``."""
    settings = settings or (switchboard.services.settings if switchboard else Settings())
    server = server_settings or ServerSettings()
    keys = resolve_api_keys(api_keys, server, insecure_no_auth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if switchboard is not None:
            app.state.board = switchboard
            yield
            return
        async with Switchboard.open(settings) as board:
            # an upgrade that changed the embedding model stops here, with the way out, instead of
            # failing every help-center part it would answer
            await asyncio.to_thread(board.services.check_knowledge_base)
            app.state.board = board
            yield

    app = FastAPI(title="Switchboard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.user_key = user_id_key(server, settings.data_dir)
    _install_error_handlers(app)
    authed = [Depends(make_auth_dependency(keys, settings))]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    async def readyz() -> dict[str, str] | JSONResponse:
        """Readiness, for a load balancer's health check: the app is open, not draining, and its
        conversation store answers within ``READY_TIMEOUT_S``. From SIGTERM on it is 503 (and the
        listener closes), so the replica leaves rotation while its in-flight turns finish."""
        board: Switchboard | None = getattr(app.state, "board", None)
        if DRAINING.is_set():
            return JSONResponse({"status": "draining"}, status_code=503)
        if board is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await asyncio.wait_for(asyncio.to_thread(_ping_store, board), READY_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - any failure means "not ready"; the log says which
            log.warning("readiness: the conversation store does not answer", exc_info=True)
            return JSONResponse({"status": "unavailable", "detail": "the conversation store does not answer"},
                                status_code=503)
        return {"status": "ready"}

    @app.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    @app.get("/v1/models", dependencies=authed)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "switchboard"}
                                           for name in (DEFAULT_MODEL, *POLICIES)]}

    def caller_of(request: Request) -> Principal:
        """Who sent the request: set by the auth dependency every /v1 route has."""
        return request.state.principal

    @app.post("/v1/chat/completions", dependencies=authed, response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        caller = caller_of(request)
        turn = await read_turn_request(request, server, settings.routing_policy)
        board: Switchboard = request.app.state.board
        headers = {CONVERSATION_HEADER: turn.conversation}
        log.info("turn %s conversation=%s policy=%s image=%s stream=%s principal=%s", turn.completion_id,
                 turn.conversation, turn.policy, turn.turn.image is not None, turn.stream, caller.name)
        if not turn.stream:  # Switchboard.stream checks access and a pending review itself
            try:
                result = await run_turn(board, turn.turn, turn.conversation, turn.policy, caller)
            except ReviewPending as exc:  # paused by a concurrent request after the check above
                raise review_pending_error(exc) from exc
            except ConversationBusy as exc:
                raise busy(exc) from exc
            except ThreadNotFound as exc:
                raise not_found(turn.conversation) from exc
            except Exception as exc:  # answered here, not by the last-resort handler: the connection stays usable
                log.exception("turn %s failed", turn.completion_id)
                raise APIError(500, TURN_FAILED, type="server_error", code="internal_error") from exc
            if result.error:  # no model could run (the local runtime failed its self-check): say why
                raise APIError(503, result.error, type="server_error", code=RUNTIME_UNAVAILABLE, headers=headers)
            return JSONResponse(completion_body(result, turn.completion_id, turn.model), headers=headers)
        try:  # before the response starts: another principal's conversation is "not found", a paused one a 409
            await board.access.check_turn(board.graph, turn.conversation, caller)
            pending = await board.pending_reviews(turn.conversation, principal=caller)
        except ThreadNotFound as exc:
            raise not_found(turn.conversation) from exc
        if pending:
            raise review_pending_error(ReviewPending(turn.conversation, pending))
        # the turn runs inside the response: a client that disconnects cancels its model calls, and
        # the turn is closed with what its finished parts found (Switchboard.stop)
        events = turn_events(board, turn.turn, turn.conversation, turn.policy, caller)

        async def stop() -> None:
            try:
                await board.stop(turn.conversation, principal=caller)
            except Exception:  # noqa: BLE001 - the next message finishes a turn left open
                log.exception("could not close the stopped turn on %s", turn.conversation)

        return StreamingResponse(stream_turn(events, turn.completion_id, turn.model, turn.include_usage, stop),
                                 media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/threads/{thread_id}", dependencies=authed)
    async def get_thread(thread_id: str, request: Request,
                         limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
        caller = caller_of(request)
        conversation = valid_conversation_id(thread_id, "thread_id")
        board: Switchboard = app.state.board
        try:  # the owner or an admin
            await board.access.check_read(board.graph, conversation, caller)
        except ThreadNotFound as exc:
            raise not_found(conversation) from exc
        history = await thread_history(board.graph, conversation, limit)
        if history is None:
            raise not_found(conversation)
        return history

    async def _reviews(conversation: str, caller: Principal) -> list[dict[str, Any]]:
        board: Switchboard = app.state.board
        snapshot = await board.graph.aget_state({"configurable": {"thread_id": conversation}})
        if not snapshot.values:
            raise not_found(conversation)
        try:  # the owner, an admin or a reviewer
            return await board.pending_reviews(conversation, principal=caller)
        except ThreadNotFound as exc:
            raise not_found(conversation) from exc

    @app.get("/v1/reviews", dependencies=authed)
    async def list_reviews(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> dict[str, Any]:
        """Reviews this principal may decide: other people's paused turns for a reviewer, their
        own in a single-user deployment (the newest ``limit`` conversations are looked at)."""
        caller = caller_of(request)
        board: Switchboard = app.state.board
        out = []
        if caller.reviewer or caller.single_user:
            threads = await asyncio.to_thread(board.services.audit.owned_threads, limit=limit)
            for conversation, owner in threads:
                if not caller.may_decide(owner):
                    continue
                state = await board.graph.aget_state({"configurable": {"thread_id": conversation}})
                if pending := review_tools.pending_reviews(state):
                    out.append({"conversation_id": conversation, "owner": owner, "pending": pending})
        return {"object": "list", "data": out}

    @app.get("/v1/threads/{thread_id}/review", dependencies=authed)
    async def get_review(thread_id: str, request: Request) -> dict[str, Any]:
        conversation = valid_conversation_id(thread_id, "thread_id")
        return {"object": "thread.review", "conversation_id": conversation,
                "pending": await _reviews(conversation, caller_of(request))}

    @app.post("/v1/threads/{thread_id}/review", dependencies=authed)
    async def post_review(thread_id: str, request: Request) -> JSONResponse:
        caller = caller_of(request)
        conversation = valid_conversation_id(thread_id, "thread_id")
        board: Switchboard = request.app.state.board
        await _reviews(conversation, caller)  # 404 before anything else for someone who may not see it
        try:  # separation of duties: a reviewer, not the conversation's owner (unless single-user)
            await board.access.check_review(board.graph, conversation, caller)
        except ThreadNotFound as exc:
            raise not_found(conversation) from exc
        except ReviewForbidden as exc:
            raise forbidden(exc) from exc
        decision = parse_body(await read_limited_body(request, server.max_request_bytes), ReviewRequest)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if not await _reviews(conversation, caller):
            raise APIError(409, f"Conversation {conversation!r} has no turn waiting for review.",
                           code="no_pending_review")
        log.info("review %s conversation=%s action=%s reviewer=%s", completion_id, conversation,
                 decision.action, caller.name)
        try:  # Switchboard.resume holds the conversation's turn lock
            result = await board.resume(conversation, decision.model_dump(include={"action", "sql"}, exclude_none=True),
                                        interrupt_id=decision.interrupt_id, principal=caller)
        except ThreadNotFound as exc:
            raise not_found(conversation) from exc
        except ReviewForbidden as exc:
            raise forbidden(exc) from exc
        except ReviewError as exc:
            raise APIError(400, f"Invalid review decision: {exc}.", code="invalid_review_decision",
                           param="interrupt_id" if decision.interrupt_id else "action") from exc
        except NoPendingReview as exc:  # decided by a concurrent request
            raise APIError(409, str(exc), code="no_pending_review") from exc
        except ConversationBusy as exc:
            raise busy(exc) from exc
        except Exception as exc:  # noqa: BLE001 - like a failed turn: logged, answered generically
            log.exception("review %s failed", completion_id)
            raise APIError(500, TURN_FAILED, type="server_error", code="internal_error") from exc
        return JSONResponse(completion_body(result, completion_id, DEFAULT_MODEL),
                            headers={CONVERSATION_HEADER: conversation})

    return app
