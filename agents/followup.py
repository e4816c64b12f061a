"""Does a turn lean on the conversation so far? One word list for every place that asks.

Triage keeps a follow-up with the previous turn's specialist, the RAG specialist folds the last
turn into a follow-up's search query, and every specialist gives the conversation summary only
to a subtask that needs it: on the local model every prompt token costs time (~58 tokens/s),
and unrelated history only distracts a small model.
"""

from __future__ import annotations

import re

_FOLLOW_UP = re.compile(
    r"^\s*(?:and|also|then|so|what about|how about)\b"
    r"|\b(?:them|they|those|these|it|its|that|this one|he|she|him|his|her|their|same|previous|earlier|above)\b",
    re.IGNORECASE,
)


def looks_like_follow_up(text: str) -> bool:
    """Elliptical or anaphoric ("and in 2024?", "how many of them ...")."""
    return bool(_FOLLOW_UP.search(text))


def needs_context(task: str) -> bool:
    """A follow-up, or too short to stand alone ("and Germany?")."""
    return looks_like_follow_up(task) or len(task.split()) <= 3
