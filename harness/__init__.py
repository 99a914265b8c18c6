"""The test and benchmark harness: real brokers and Redis on free ports, the worker and the monitor as processes
or in-process replays, topic readers, load generators, samplers. Tests and ``bench/`` import it as a package
(run benchmarks as ``python -m bench.<name>`` from the repository root); it is not shipped in the wheel."""
