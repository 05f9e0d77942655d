"""Seeing a runtime from outside: metrics, log streams, health answered from the ledger."""
