"""The model layer: value types (``values``), the registry (which models, which tier), provider
clients (``providers``), the gateway every call goes through (cache, budgets, fallback, ledger),
the local runtime (llama.cpp) and embeddings, and record/replay of model exchanges."""
