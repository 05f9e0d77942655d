"""Pure decisions of the runtime: state machines, graph readiness, routing, error signatures.

Nothing in this package starts a thread, touches a file or reads the clock, so every rule here
is tested directly and quickly; actors glue these decisions to the world.
"""
