"""The actors of the runtime: Supervisor, Ledger, Scheduler, Router and one Executor per adapter.

Each owns its state and talks to the others only by telling them messages from ``messages``.
"""
