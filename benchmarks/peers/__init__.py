"""Peers run beside paceline in the same run, each in a virtualenv of its own (baseline.py).

Their scripts here are run by that virtualenv's Python, not imported by the suite.
"""
