"""The support graph: ``from graphs import build_support_graph``.

Imported lazily so that ``graphs.state`` (which the agents use) does not pull in the agents.
"""

from typing import Any

__all__ = ["build_support_graph", "turn_input"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from graphs import support

        return getattr(support, name)
    raise AttributeError(name)
