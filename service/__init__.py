"""What the zeroproof services share (worker, monitor, console, CLI) and the pure library must not know about:
connection settings for Kafka (TLS/SASL included), Redis and Alertmanager, secret handling, durations and
logging. Each service's settings compose these parts, so a connection is configured the same way everywhere.
"""
