"""Monitor: windowed coverage, gap and ⊥ rates across workers, alerts, Prometheus."""
