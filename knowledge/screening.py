"""Knowledge-base text is data, not instructions: find text that addresses the model.

A help-center article tells customers things; it never tells *the assistant* to ignore its
rules, adopt a role or say something to every customer. Text that does is an injection attempt
(or at best text no answer should rest on), so ingestion marks its document ``flagged`` and the
knowledge-base specialist leaves every passage of a flagged document out of its prompt.
"""

from __future__ import annotations

import functools
import re

_INSTRUCTION_LIKE = [
    re.compile(p, re.IGNORECASE)
    for p in (
        # "ignore (all) previous instructions", "disregard the rules above", "forget your prompt"
        r"\b(?:ignore|disregard|forget|override|bypass)\b[^.\n]{0,40}?"
        r"\b(?:instructions?|rules|prompts?|guidelines|directions|guardrails|polic(?:y|ies) above)\b",
        r"\bsystem\s+prompt\b",
        r"\b(?:new|updated|real|actual)\s+instructions?\s*(?:for|to)?\s*(?:the\s+)?(?:assistant|ai|model|bot)?\s*:",
        r"\byou\s+are\s+(?:now|no\s+longer)\b",
        r"\b(?:as\s+an|you\s+are\s+an?)\s+(?:ai|assistant|language\s+model|llm|chatbot)\b",
        r"\b(?:assistants?|ai|chatbots?|language\s+models?|llms?|bots?)\s*[,:]?\s+(?:must|should|shall|will\s+always)\b",
        r"\b(?:tell|inform|answer|reply\s+to|respond\s+to)\s+(?:every|all|any)\s+(?:customers?|users?|people)\b",
        r"</?\s*(?:passages?|system|instructions?)\s*>",
    )
]


@functools.lru_cache(maxsize=4096)  # the specialist screens the same stored passages turn after turn
def instruction_like(text: str) -> str:
    """The first instruction-like line of ``text`` (trimmed to 120 characters), or ``""``."""
    for line in text.splitlines() or [text]:
        if any(p.search(line) for p in _INSTRUCTION_LIKE):
            return " ".join(line.split())[:120]
    return ""
