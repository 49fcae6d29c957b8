"""Snapstores: the protocol (:mod:`.base`), the object-store base (:mod:`.objectstore`), the
credential-rotation wrapper (:mod:`.rotating`), one module per provider, and how they are opened
(:mod:`.opening`; providers and their SDKs are imported on first use).

Nothing imported here may import ``etcdbr.config`` at module level: ``config`` takes the provider
names from :mod:`.providers`.
"""

from __future__ import annotations

from .base import SnapStore
from .opening import open_checked, open_store, open_stores
from .providers import PROVIDERS, UNSUPPORTED_PROVIDERS

__all__ = ["PROVIDERS", "UNSUPPORTED_PROVIDERS", "SnapStore", "open_checked", "open_store", "open_stores"]
