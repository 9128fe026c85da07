"""paceline: a job service with a per-key rate window, on PostgreSQL alone."""

__version__ = "0.1.0"
