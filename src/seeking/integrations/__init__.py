"""The methods on other frameworks' models and trainers.

Each submodule imports its framework lazily, through :func:`require`, so that ``import seeking`` never
needs one; a missing framework is one :class:`~seeking.errors.ConfigError` naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ConfigError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (e.g. ``"transformers"``), or raise ``ConfigError`` naming the package extra
    (``pip install 'seeking[<extra>]'``) that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"this needs {module.split('.')[0]}, which is not installed ({exc}): pip install 'seeking[{extra}]'"
        ) from None
