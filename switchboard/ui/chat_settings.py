"""The chat settings panel next to the message box: the routing policy of the session's turns."""

from __future__ import annotations

import chainlit as cl
from chainlit.input_widget import InputWidget, Select

from tools.models.values import POLICIES

POLICY_LABELS = {  # how the chat settings show the routing policies (tools/models/values.py names them)
    "cost-saver": "Cost saver: cheapest models",
    "best-quality": "Best quality: strongest models",
}


async def send_settings(policy: str) -> None:
    widgets: list[InputWidget] = [
        Select(
            id="policy",
            label="Routing policy",
            items={POLICY_LABELS.get(p, p.capitalize()): p for p in POLICIES},
            initial_value=policy,
            description="Which model tier each specialist asks for (cost-saver and balanced stay on "
            "light models; best-quality uses heavy ones when they are configured).",
        )
    ]
    await cl.ChatSettings(widgets).send()
