"""The faust-streaming worker: the routing agent (and, later, the statistics agent)."""
