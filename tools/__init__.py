"""Building blocks below the agents, by concern. Nothing here imports ``agents``, ``graphs``,
``knowledge`` or ``switchboard``; everything takes plain values (the composition root,
``switchboard/services.py``, reads the settings and builds these)."""
