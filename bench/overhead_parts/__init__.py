"""The pieces of ``bench/overhead.py``, the orchestration-overhead benchmark (run that file).

* ``stack`` -- the bench settings (one instant fake model, no response cache), the requests, the
  scripted fake model that answers as each agent's model would, and the turn helpers;
* ``probe`` -- wall-time probes wrapped around the services' and checkpointers' methods;
* ``per_turn`` -- figure 1, orchestration overhead per turn and where the time goes;
* ``supervisor`` -- the ``langgraph-supervisor`` baseline graph and its scripted model;
* ``llm_calls`` -- figure 2, LLM calls per k-part request, Switchboard vs the baseline;
* ``throughput`` -- figure 3, turns/s with many conversations at once;
* ``profiling`` -- the ``--profile`` cProfile of sequential turns.
"""
