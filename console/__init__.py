"""The review console: a web application where people review ⊥ inputs and watch coverage (issue 14).

It reads the same Redis review log (``service.review``) and the same Kafka topics (stats, alerts, DLQ) as the
worker and the monitor; overview rates come from the monitor's own core (``monitoring.service.Monitor``), so they
equal the monitor's for the same data. See docs/console.md.
"""
