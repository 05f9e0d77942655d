"""The ``orchestrate`` command line (:mod:`cli.main`).

``__version__`` is the package's version (pyproject.toml reads it from here).
"""

__version__ = "0.1.0"
