"""Plan input: workstream files -> validated, immutable :class:`Plan` -> ExecutionRequest."""
