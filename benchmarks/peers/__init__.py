"""Peers run beside paceline in the same run, each installed once in a folder of its own under
~/.cache/paceline-bench/: pgqueuer in a virtualenv (baseline.py), graphile-worker with npm
(graphile.py).

Their scripts here are run by the peer's own Python or by Node, not imported by the suite.
"""
