"""The support graph as the LangGraph server loads it: ``langgraph.json`` -> ``./switchboard/langgraph_app.py:graph``.

Built without a checkpointer on purpose: ``langgraph dev`` / LangGraph Platform attach their own
persistence (threads, runs) and refuse a graph that brings one. Settings come from the
``SWITCHBOARD_*`` environment of the server process (or the ``env`` file named in
``langgraph.json``). Importing this module is cheap: models, the database and the knowledge base
are opened on first use, so the server starts in seconds and replay never loads the GGUF.

Input per run: ``{"question": ..., "image_path": null, "messages": [{"role": "user", "content": ...}]}``
(``image_path`` must be sent, even as null: it is ordinary state and would otherwise carry over
from the thread's previous turn); context: ``{"policy": "balanced"}``. ``image_path`` is opened
only inside ``<data_dir>/uploads`` (tools/vision/images.py ``validate_upload``; anything else gets one
refusal that says nothing about the file). The server's checkpointer makes human review work as
at the other doors; run without one (a bare ``graph.ainvoke``), a query that needs review is
refused instead of run (tools/review.py ``review_mode``).
"""

from __future__ import annotations

from graphs.support import build_support_graph
from switchboard.services import Services
from switchboard.settings import Settings

graph = build_support_graph(Services(Settings()))
