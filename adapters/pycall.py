"""Child-process entry point of the python adapter (started by :class:`adapters.tools.PythonAdapter`).

The JSON holds ``callable`` (``module:function``), ``args`` and ``kwargs``. The task's cwd is
first on ``sys.path``, so a project's own modules import. Exit status: 0 when the function
returns anything but ``False``; 1 when it returns ``False`` or raises (traceback in the log).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback


def main(argv: list[str]) -> int:
    request = json.loads(argv[-1])
    module_name, _, function_name = request["callable"].partition(":")
    if sys.path[0] not in ("", os.getcwd()):
        sys.path.insert(0, os.getcwd())
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        result = function(*request.get("args", []), **request.get("kwargs", {}))
    except Exception:
        traceback.print_exc()
        return 1
    print(f"result: {result!r}", flush=True)
    return 1 if result is False else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
