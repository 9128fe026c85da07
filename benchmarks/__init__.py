"""paceline's benchmark suite: `make bench` (or `python -m benchmarks --help`).

It starts its own PostgreSQL and real `paceline serve` replicas, drives them from separate
load-generator processes (wrk, pgbench), measures the matching pgbench ceiling on the same
server in the same run, and prints one table: figure, ceiling, ratio, goal.
"""
