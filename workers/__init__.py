"""Streaming inference worker: Kafka in, strict decode in micro-batches, outputs, review log, fallbacks."""
