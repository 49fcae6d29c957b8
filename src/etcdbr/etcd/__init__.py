"""etcd's v3 API, spoken by this tool's own wire layer over grpcio.

* :mod:`.proto`: the messages and service stubs, generated from etcd 3.5's .proto files by
  ``scripts/gen-etcd-protos``.
* :mod:`.client`: the async client the sidecar lives on (one endpoint; TLS, auth tokens, status,
  revision, the snapshot and watch streams, defragmentation, membership changes).
* :mod:`.blocking`: the blocking client a restore drives its temporary member with (pipelined
  transactions as futures).
* :mod:`.errors`: one way to turn a failed call into an :class:`~etcdbr.errors.EtcdError`.
"""

# The whole keyspace: key "\0" with range_end "\0" means every key >= "\0" (the Go tool's prefix "").
ALL_KEYS = b"\0"
