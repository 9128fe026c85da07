"""Seeing the queue: what the page and /metrics show, the limit auditor, transition logs.

Everything here reads the database through `paceline.db` and never the history row by row;
`web` serves it.
"""
