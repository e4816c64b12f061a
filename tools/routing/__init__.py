"""Routing decisions made without a model call: the intent classifier triage uses first
(``intent``) and the tier router that picks light or heavy per subtask (``tier_router``), with
its training from recorded outcomes (``training``; ``switchboard train-router``)."""
