"""The chaos soak (`make soak`): three replicas on a PostgreSQL of the soak's own, a mixed load,
faults at random moments from a seed, and an audit of the whole history at the end."""
