"""Test helpers: real services (Kafka-protocol broker, Redis) started by the tests themselves."""
