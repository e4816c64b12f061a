"""The support graph (``graphs.support.build_support_graph``), its state and synthesis."""
