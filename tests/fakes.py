"""The scripted fake chat models the tests use (they live in the library: tools/models/scripted.py)."""

from tools.models.scripted import ScriptedChatModel, by_system_prompt

__all__ = ["ScriptedChatModel", "by_system_prompt"]
