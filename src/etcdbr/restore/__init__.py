"""Restoring etcd data dirs from snapshot stores: ``restore``, ``initialize`` and ``compact``.

* :class:`Restorer` - latest full snapshot (via the real ``etcdutl snapshot restore``) plus every
  delta replayed through a temporary etcd, built beside the data dir and swapped in.
* :func:`choose_store` / :func:`select_source` - ``--restore-from`` primary, secondary or auto.
* :class:`Initializer` - validate a data dir; restore it only when it is not usable.
* :class:`Compactor` - fold the latest chain into one new full snapshot.
"""

from .compactor import Compactor, CompactResult
from .initializer import Initializer, InitResult, InitStatus
from .restorer import Chain, Restorer
from .selection import Selection, choose_store, select_source
from .validator import DataDirStatus, Validation, validate_data_dir

__all__ = [
    "Chain",
    "Compactor",
    "CompactResult",
    "DataDirStatus",
    "InitResult",
    "InitStatus",
    "Initializer",
    "Restorer",
    "Selection",
    "Validation",
    "choose_store",
    "select_source",
    "validate_data_dir",
]
