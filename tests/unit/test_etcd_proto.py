"""The committed etcd API stubs are what scripts/gen-etcd-protos makes of the committed .proto files,
they import with the protobuf and grpcio versions pyproject.toml declares, and the .proto files
are free of the Go-only annotations the script strips."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import __version__ as protobuf_version

from etcdbr.etcd import proto
from etcdbr.etcd.proto import rpc_pb2

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen-etcd-protos"
PACKAGE = ROOT / "src" / "etcdbr" / "etcd" / "proto"


def _script():
    loader = importlib.machinery.SourceFileLoader("gen_etcd_protos", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gen_etcd_protos", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3])


def _declared_lower_bound(package: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(rf'"{re.escape(package)}>=([0-9.]+),<[0-9.]+"', text)
    assert match, f"{package} must be declared with a lower and an upper bound"
    return match.group(1)


def test_committed_stubs_equal_a_fresh_generation(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True)
    generated = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in PACKAGE.iterdir() if p.name.endswith((".py", ".pyi")) and "_pb2" in p.name)
    assert generated == committed
    for name in generated:
        assert (tmp_path / name).read_bytes() == (PACKAGE / name).read_bytes(), f"{name} differs: run the script"


def test_stubs_need_no_more_than_the_declared_versions():
    gencode = re.search(r"# Protobuf Python Version: ([0-9.]+)", (PACKAGE / "rpc_pb2.py").read_text()).group(1)
    assert _version(_declared_lower_bound("protobuf")) >= _version(gencode)
    assert _version(protobuf_version) >= _version(gencode)
    grpc_gencode = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'",
                             (PACKAGE / "rpc_pb2_grpc.py").read_text()).group(1)
    assert _version(_declared_lower_bound("grpcio")) >= _version(grpc_gencode)
    assert _version(grpc.__version__) >= _version(grpc_gencode)


def test_stubs_speak_etcds_wire_names():
    # The package names stay etcd's, so the gRPC method paths and message names are etcd's own.
    assert proto.RangeRequest.DESCRIPTOR.full_name == "etcdserverpb.RangeRequest"
    assert proto.KeyValue.DESCRIPTOR.full_name == "mvccpb.KeyValue"
    assert proto.User.DESCRIPTOR.full_name == "authpb.User"
    service = rpc_pb2.DESCRIPTOR.services_by_name["Maintenance"]
    assert service.full_name == "etcdserverpb.Maintenance" and "Snapshot" in service.methods_by_name
    # A message round-trips through the wire format.
    txn = proto.TxnRequest(compare=[proto.Compare(target=proto.Compare.MOD, key=b"k", mod_revision=7)],
                           success=[proto.RequestOp(request_put=proto.PutRequest(key=b"k", value=b"\0\xff"))])
    assert proto.TxnRequest.FromString(txn.SerializeToString()) == txn


def test_committed_protos_are_clean_and_the_cleaner_strips_what_etcd_carries():
    for name in ("auth.proto", "kv.proto", "rpc.proto"):
        text = (PACKAGE / name).read_text()
        assert "(gogoproto." not in text and "(google.api." not in text
        assert re.findall(r'^import "([^"]+)";', text, re.M) == {
            "rpc.proto": ["etcdbr/etcd/proto/kv.proto", "etcdbr/etcd/proto/auth.proto"]}.get(name, [])
        assert text.startswith("// etcd 3.5.")
    upstream = '''syntax = "proto3";
package etcdserverpb;

import "gogoproto/gogo.proto";
import "etcd/api/mvccpb/kv.proto";

// for grpc-gateway
import "google/api/annotations.proto";

option (gogoproto.marshaler_all) = true;

service Lease {
  rpc LeaseRevoke(LeaseRevokeRequest) returns (LeaseRevokeResponse) {
      option (google.api.http) = {
        post: "/v3/lease/revoke"
        body: "*"
        additional_bindings {
            post: "/v3/kv/lease/revoke"
            body: "*"
        }
    };
  }
}
'''
    cleaned = _script().clean(upstream, "etcdserverpb/rpc.proto", "3.5.27")
    assert "(gogoproto." not in cleaned and "(google.api." not in cleaned and "gogo.proto" not in cleaned
    assert "annotations.proto" not in cleaned and "grpc-gateway" not in cleaned
    assert 'import "etcdbr/etcd/proto/kv.proto";' in cleaned
    assert "rpc LeaseRevoke(LeaseRevokeRequest) returns (LeaseRevokeResponse) {}" in cleaned
    with pytest.raises(SystemExit, match="annotation"):
        _script().clean('message M { bytes k = 1 [(gogoproto.nullable) = false]; }', "x.proto", "3.5.27")
