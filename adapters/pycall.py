"""Child-process entry point of the python adapter (started by :class:`adapters.tools.PythonAdapter`).

The JSON holds ``callable`` (``module:function``), ``args`` and ``kwargs``. The return value is
written as JSON (its ``repr`` when it is not JSON-able) to ``$ORCHESTRATE_RESULT_PATH``. The task's cwd is
first on ``sys.path``, so a project's own modules import. Exit status: 0 when the function
returns anything but ``False``; 1 when it returns ``False`` or raises (traceback in the log).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

# Where the executor wants the return value (JSON); set by the python adapter.
RESULT_PATH_ENV = "ORCHESTRATE_RESULT_PATH"


def main(argv: list[str]) -> int:
    request = json.loads(argv[-1])
    module_name, _, function_name = request["callable"].partition(":")
    if sys.path[0] not in ("", os.getcwd()):
        sys.path.insert(0, os.getcwd())
    # orchestrate's own helpers (e.g. planning.mission_report) stay importable, after the
    # project's modules, even when orchestrate runs from a checkout rather than installed.
    home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if home not in sys.path:
        sys.path.append(home)
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        result = function(*request.get("args", []), **request.get("kwargs", {}))
    except Exception:
        traceback.print_exc()
        return 1
    print(f"result: {result!r}", flush=True)
    result_path = os.environ.get(RESULT_PATH_ENV)
    if result_path:
        try:
            encoded = json.dumps(result)
        except (TypeError, ValueError):
            encoded = json.dumps(repr(result))
        with open(result_path, "w", encoding="utf-8") as handle:
            handle.write(encoded)
    return 1 if result is False else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
