"""The embedded stack behind `make run`: broker, Redis, model, worker, monitor and a robot-arm event producer."""
