"""The state layer: the ledger's database.

``db`` finds and opens it, ``models`` declares its tables, ``migrate`` versions the schema
(Alembic revisions in ``migrations/``), ``store`` is the only writer, ``reader`` answers queries,
``clock`` gives its timestamps.
"""
