"""The vision specialist: questions about an uploaded image.

The upload is validated first: only a file inside the uploads folder is opened (whichever door
set ``image_path``), then its type by content, size, pixels, frames. With a vision-capable
model available for the agent's tier, the image goes to it; otherwise the offline path reads
the image with OCR, extracts receipt fields by layout, and the local model answers from that
text, saying plainly what could not be read.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from langchain_core.messages import HumanMessage, SystemMessage

from agents import prompts
from agents.base import Outcome, context_block, specialist
from agents.contract import Evidence, Handoff
from agents.deps import AgentServices
from agents.streaming import PartStream
from tools.models.gateway import call_model
from tools.models.values import ModelSpec, RegistryError
from tools.vision.images import ImageRejected, ValidatedImage, validate_upload

OCR_CHARS = 1200


class VisionEvidence(Evidence, total=False):
    """What the vision specialist read from the uploaded image."""

    image: dict[str, Any]  # name, width, height, format, downscaled
    ocr_text: str
    fields: dict[str, Any]  # receipt fields read by OCR (total, date, merchant, unreadable)


class VisionAgent:
    name: ClassVar[str] = "vision"
    title: ClassVar[str] = "Vision"  # the chat UI's step
    label: ClassVar[str] = "Read from the image"  # introduces its part of a combined answer

    def __init__(self, services: AgentServices) -> None:
        self.services = services

    @staticmethod
    def checkable(evidence: VisionEvidence) -> tuple[str, str] | None:
        """What a validator checks this answer against: what OCR read from the image."""
        if not (evidence.get("fields") or evidence.get("ocr_text")):
            return None
        fields = ", ".join(f"{k}: {v}" for k, v in (evidence.get("fields") or {}).items() if v)
        return "what was read from the image", f"{fields}\nText: {evidence.get('ocr_text', '')}"

    async def __call__(self, handoff: Handoff) -> dict[str, Any]:
        async with specialist(self.name, handoff, VisionEvidence()) as out:
            path = handoff.get("image_path")
            if not path:
                out.fail("No image is attached. Please attach the receipt, screenshot or photo you mean.")
                return out.update()
            try:
                # only inside the uploads folder, whichever door set image_path (tools/vision/images.py)
                image = validate_upload(path, self.services.agent_config.uploads_dir)
            except ImageRejected as exc:
                out.fail(exc.message, error=f"image rejected: {exc.message}")
                return out.update()
            out.evidence["image"] = {
                "name": image.name, "width": image.width, "height": image.height,
                "format": image.original_format, "downscaled": image.downscaled,
            }
            spec = self._vision_model(handoff["policy"], out)
            if spec is not None:
                await self._ask_vision_model(spec, image, handoff, out)
            else:
                await self._ocr_then_answer(image, handoff, out)
        return out.update()

    def _vision_model(self, policy: str, out: Outcome[VisionEvidence]) -> ModelSpec | None:
        reg = self.services.registry
        try:
            tier = reg.decide_tier("vision", policy, out.subtask["task"], capability="vision")
            spec = reg.pick(tier.tier, capability="vision")
        except RegistryError:
            return None
        out.evidence["tier"] = tier.as_dict()
        return spec

    async def _ask_vision_model(self, spec: ModelSpec, image: ValidatedImage, handoff: Handoff, out: Outcome[VisionEvidence]) -> None:
        handle = self.services.registry.handle(spec.name, role="vision")
        msgs = [
            SystemMessage(prompts.VISION_MODEL_SYSTEM.format(**self.services.agent_config.profile.prompt_values())),
            HumanMessage(
                content=[
                    {"type": "text", "text": f"{context_block(handoff)}Question: {out.subtask['task']}"},
                    {"type": "image_url", "image_url": {"url": image.data_url()}},
                ]
            ),
        ]
        reply, entry = await call_model(handle, msgs, agent="vision", task=out.subtask["task"], max_tokens=200, subtask_id=out.subtask["id"],
                                        answer=PartStream(out.subtask["id"], self.name))
        out.ledger.append(entry)
        out.answer = str(reply.content).strip()
        out.evidence["model"] = spec.name

    async def _ocr_then_answer(self, image: ValidatedImage, handoff: Handoff, out: Outcome[VisionEvidence]) -> None:
        from tools.vision.ocr import read_image
        from tools.vision.receipts import extract_receipt_fields

        ocr = await asyncio.to_thread(read_image, image)  # seconds of CPU: off the event loop
        text = ocr.text()
        if not text.strip():
            out.fail("I could not read any text in this image. If it is a receipt or a screenshot, "
                     "please upload a sharper or larger picture.")
            return
        fields = extract_receipt_fields(ocr)
        out.evidence["ocr_text"] = text[:OCR_CHARS]
        out.evidence["fields"] = {
            "merchant": fields.merchant, "date": fields.date, "total": fields.total,
            "currency": fields.currency, "unreadable": fields.unreadable,
        }
        out.entities = {
            f"receipt {k}": str(v) for k, v in out.evidence["fields"].items() if v and k != "unreadable"
        }
        if out.subtask.get("extract_only"):
            # another specialist answers the question from what was read: no model call here
            out.answer = f"{fields.as_prompt_text()}\nText on the image: {' / '.join(text.splitlines()[:12])}"
            return
        handle, tier = self.services.registry.route("vision", handoff["policy"], task=out.subtask["task"])
        out.evidence["tier"] = tier.as_dict()
        msgs = [
            SystemMessage(prompts.VISION_SYSTEM.format(**self.services.agent_config.profile.prompt_values())),
            HumanMessage(
                prompts.VISION_USER.format(
                    ocr=f"{fields.as_prompt_text()}\nFull text:\n{text[:OCR_CHARS]}",
                    context=context_block(handoff),
                    question=out.subtask["task"],
                )
            ),
        ]
        reply, entry = await call_model(handle, msgs, agent="vision", task=out.subtask["task"], max_tokens=160, subtask_id=out.subtask["id"],
                                        answer=PartStream(out.subtask["id"], self.name))
        out.ledger.append(entry)
        out.answer = str(reply.content).strip()
        out.evidence["model"] = handle.spec.name
