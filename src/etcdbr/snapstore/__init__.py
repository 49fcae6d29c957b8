"""Snapstores: the protocol (:mod:`.base`), the object-store base (:mod:`.objectstore`), the
credential-rotation wrapper (:mod:`.rotating`), one module per provider, and how they are opened
(:mod:`.opening`; providers and their SDKs are imported on first use).

Nothing imported here may import ``etcdbr.config`` at module level: ``config`` takes the provider
names from :mod:`.providers`. The names below are imported when first asked for, so that ``config``
(and with it every command's ``--help``) loads :mod:`.providers` alone.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import SnapStore
    from .opening import open_checked, open_store, open_stores
    from .providers import PROVIDERS, UNSUPPORTED_PROVIDERS

_HOMES = {
    "SnapStore": ".base",
    "open_checked": ".opening",
    "open_store": ".opening",
    "open_stores": ".opening",
    "PROVIDERS": ".providers",
    "UNSUPPORTED_PROVIDERS": ".providers",
}

__all__ = ["PROVIDERS", "UNSUPPORTED_PROVIDERS", "SnapStore", "open_checked", "open_store", "open_stores"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value
