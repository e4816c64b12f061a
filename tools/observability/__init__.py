"""What a turn leaves behind: the audit trail and its comparisons, traces (OpenTelemetry),
Prometheus metrics, redaction of personal data, and the one percentile definition."""
