"""Parts of bench/streaming.py: the questions and run plan, one module per door, the report."""
