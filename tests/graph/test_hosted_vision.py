"""With a vision-capable hosted model configured, the image itself goes to it (over the real
OpenAI client code, against a loopback fake of the API); without one, offline OCR is used."""

from __future__ import annotations

import base64
from pathlib import Path

from langgraph.checkpoint.memory import InMemorySaver

from graphs.support import build_support_graph
from switchboard.api import Switchboard
from switchboard.services import Services
from tests.fake_openai import FakeOpenAI
from tests.stacks import registry_file

INVOICE = Path(__file__).parents[1] / "fixtures" / "images" / "chinook_invoice_98.png"





async def test_image_goes_to_the_configured_vision_model(make_settings, tmp_path):
    with FakeOpenAI(respond=lambda body: "The total on this invoice is 3.98 USD.") as fake:
        settings = make_settings(models_file=registry_file(tmp_path, fake.url))
        services = Services(settings)
        sb = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
        turn = await sb.ask("What is the total on this receipt?", image=INVOICE, thread_id="v")
    assert turn.answer == "The total on this invoice is 3.98 USD."
    (req,) = fake.requests
    parts = req["messages"][-1]["content"]
    image_part = next(p for p in parts if p["type"] == "image_url")
    assert image_part["image_url"]["url"].startswith("data:image/png;base64,")
    decoded = base64.b64decode(image_part["image_url"]["url"].split(",", 1)[1])
    assert decoded[:8] == b"\x89PNG\r\n\x1a\n"   # the validated, re-encoded upload
    assert any("What is the total on this receipt?" in p.get("text", "") for p in parts)
    (entry,) = turn.ledger
    assert entry["model"] == "vision-server" and entry["tokens_in"] == 100
    assert entry["cost_usd"] > 0  # priced from the registry


async def test_a_rejected_upload_never_reaches_the_model(make_settings, tmp_path):
    bad = tmp_path / "receipt.png"
    bad.write_bytes(b"%PDF-1.7 not an image")
    with FakeOpenAI(respond=lambda body: "should not be called") as fake:
        settings = make_settings(models_file=registry_file(tmp_path, fake.url))
        services = Services(settings)
        sb = Switchboard(build_support_graph(services=services, checkpointer=InMemorySaver()), services)
        turn = await sb.ask("What is the total on this receipt?", image=bad, thread_id="b")
    assert fake.requests == []
    assert "receipt.png" in turn.answer and "PDF" in turn.answer
    assert turn.results[0]["ok"] is False
