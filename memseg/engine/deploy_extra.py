"""The optional ``deploy`` extra (onnx, onnxscript, onnxruntime; OpenVINO for the bf16 route): what is missing,
the install hint, and the one-line notices the fast CPU routes print.

Examples:
    >>> missing_modules("json", "no_such_module_here")
    ['no_such_module_here']
"""

from __future__ import annotations

import sys

__all__ = ["DEPLOY_MODULES", "missing_modules", "require_modules", "say_once"]

DEPLOY_MODULES = ("onnx", "onnxscript", "onnxruntime")


_SAID: set[str] = set()


def say_once(message: str) -> None:
    """One stderr line, once per process."""
    if message not in _SAID:
        _SAID.add(message)
        print(message, file=sys.stderr, flush=True)


def missing_modules(*modules: str) -> list[str]:
    """Which of ``modules`` are not installed."""
    import importlib.util

    return [m for m in modules if importlib.util.find_spec(m) is None]


def require_modules(*modules: str) -> None:
    """``ImportError`` naming the install command when one of ``modules`` (the ``deploy`` extra) is missing."""
    missing = missing_modules(*modules)
    if missing:
        raise ImportError(f"ONNX export/runtime needs {', '.join(missing)}: pip install 'memseg[deploy]' "
                          "(onnx, onnxscript, onnxruntime)")
