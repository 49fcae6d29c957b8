"""Snapstores: one module per provider behind the protocol of :mod:`.base`.

Providers are imported on first use, so running against S3 never imports the Azure SDK.
"""

from __future__ import annotations

import importlib

from ..config import PROVIDERS, UNSUPPORTED_PROVIDERS, StoreConfig
from ..errors import ConfigError
from .base import SnapStore

_REGISTRY = {
    "Local": ("etcdbr.snapstore.local", "LocalStore"),
    "S3": ("etcdbr.snapstore.s3", "S3Store"),
    "GCS": ("etcdbr.snapstore.gcs", "GCSStore"),
    "ABS": ("etcdbr.snapstore.abs", "ABSStore"),
}


def open_store(config: StoreConfig) -> SnapStore:
    """Build the store for ``config``. Raises ConfigError for bad settings or credentials."""
    provider = config.effective_provider
    if provider not in _REGISTRY:
        if provider in UNSUPPORTED_PROVIDERS:
            raise ConfigError(f"storage provider {provider!r} is not supported by this tool; use one of {', '.join(PROVIDERS)}")
        raise ConfigError(f"unknown storage provider {provider!r}; expected one of {', '.join(PROVIDERS)} (case-sensitive)")
    module_name, class_name = _REGISTRY[provider]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # pragma: no cover - all SDKs are dependencies today
        raise ConfigError(f"the {provider} provider needs a package that is not installed: {exc.name}") from exc
    return getattr(module, class_name)(config)


__all__ = ["SnapStore", "open_store"]
