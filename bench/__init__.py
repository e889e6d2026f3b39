"""Benchmark harness: load clients, the engine floor, and the suite behind bench/run.sh."""
