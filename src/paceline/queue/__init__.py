"""The queue: enqueue and read jobs, claim due ones, run them with a handler."""
