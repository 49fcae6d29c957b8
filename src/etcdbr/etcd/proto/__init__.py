"""etcd 3.5's v3 API: messages and gRPC service stubs, generated from the .proto files beside this
module by ``scripts/gen-etcd-protos`` (do not edit the ``*_pb2*`` modules; run the script).

Everything is re-exported here as one namespace, as etcd's Go ``etcdserverpb`` package offers it:
``proto.RangeRequest``, ``proto.KeyValue``, ``proto.KVStub`` ...
"""

from .auth_pb2 import Permission, Role, User, UserAddOptions  # noqa: F401
from .kv_pb2 import Event, KeyValue  # noqa: F401
from .rpc_pb2 import *  # noqa: F401,F403 - every request, response and enum of the API
from .rpc_pb2_grpc import AuthStub, ClusterStub, KVStub, LeaseStub, MaintenanceStub, WatchStub  # noqa: F401
