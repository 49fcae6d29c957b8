"""Smoke tests: every real test service starts and does real work."""

from __future__ import annotations

import botocore.exceptions
import pytest

pytestmark = pytest.mark.integration


def test_etcd_put_get_with_etcdctl(etcd_server):
    assert etcd_server.is_running()
    assert etcd_server.client_url.startswith("http://127.0.0.1:")
    assert (etcd_server.bin_dir / "etcdctl").exists()
    etcd_server.etcdctl("put", "/smoke/key", "value-1")
    out = etcd_server.etcdctl("get", "/smoke/key", "--print-value-only").stdout.strip()
    assert out == "value-1"
    assert etcd_server.data_dir.is_dir()
    assert etcd_server.status()["version"].startswith("3.5")


def test_etcd_cluster_survives_leader_loss(etcd_cluster_factory):
    cluster = etcd_cluster_factory(3)
    cluster.etcdctl("put", "/smoke/c", "v")
    leader = cluster.leader_index()
    cluster.stop_member(leader)
    new_leader = cluster.leader_index()
    assert new_leader != leader
    assert cluster.etcdctl("get", "/smoke/c", "--print-value-only").stdout.strip() == "v"
    cluster.start_member(leader)
    assert all(m.is_running() for m in cluster.members)
    cluster.wait_healthy()


def test_s3_put_get_list(s3_server, s3_bucket):
    c = s3_server.client()
    for i in range(3):
        c.put_object(Bucket=s3_bucket, Key=f"dir/obj-{i}", Body=f"data-{i}".encode())
    assert c.get_object(Bucket=s3_bucket, Key="dir/obj-1")["Body"].read() == b"data-1"
    pages = list(
        c.get_paginator("list_objects_v2").paginate(
            Bucket=s3_bucket, Prefix="dir/", PaginationConfig={"PageSize": 2}
        )
    )
    keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
    assert keys == ["dir/obj-0", "dir/obj-1", "dir/obj-2"]
    assert len(pages) == 2


def test_s3_rejects_wrong_secret(s3_server, s3_bucket):
    bad = s3_server.client(secret_key=s3_server.secret_key + "x", retries=0)
    with pytest.raises(botocore.exceptions.ClientError) as ei:
        bad.list_objects_v2(Bucket=s3_bucket)
    assert ei.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    unknown = s3_server.client(access_key="no-such-key", retries=0)
    with pytest.raises(botocore.exceptions.ClientError) as ei:
        unknown.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    assert ei.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_s3_object_lock_bucket(s3_server):
    from services import unique_name

    name = s3_server.create_bucket(unique_name("lock"), object_lock=True)
    c = s3_server.client()
    c.put_object_lock_configuration(
        Bucket=name,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    vid = c.put_object(Bucket=name, Key="snap", Body=b"x")["VersionId"]
    assert c.head_object(Bucket=name, Key="snap")["ObjectLockMode"] == "GOVERNANCE"
    with pytest.raises(botocore.exceptions.ClientError) as ei:
        c.delete_object(Bucket=name, Key="snap", VersionId=vid)
    assert ei.value.response["Error"]["Code"] == "AccessDenied"
    c.delete_object(Bucket=name, Key="snap", VersionId=vid, BypassGovernanceRetention=True)


def test_gcs_upload_list(gcs_server, gcs_bucket):
    client = gcs_server.client()
    bucket = client.bucket(gcs_bucket)
    for i in range(5):
        bucket.blob(f"dir/obj-{i}").upload_from_string(f"data-{i}".encode())
    assert bucket.blob("dir/obj-3").download_as_bytes() == b"data-3"
    pages = list(client.list_blobs(gcs_bucket, prefix="dir/", page_size=2).pages)
    names = [b.name for p in pages for b in p]
    assert names == [f"dir/obj-{i}" for i in range(5)]
    assert len(pages) == 3


def test_azurite_upload_list(azurite_server, abs_container):
    cc = azurite_server.client().get_container_client(abs_container)
    for i in range(5):
        cc.upload_blob(f"dir/obj-{i}", f"data-{i}".encode())
    assert cc.download_blob("dir/obj-2").readall() == b"data-2"
    pages = list(cc.list_blobs(name_starts_with="dir/", results_per_page=2).by_page())
    names = [b.name for p in pages for b in p]
    assert names == [f"dir/obj-{i}" for i in range(5)]
    assert len(pages) == 3


def test_azurite_rejects_wrong_key(azurite_server, abs_container):
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import ContainerClient

    wrong = "A" * 4 + azurite_server.key[4:]
    cc = ContainerClient(
        azurite_server.endpoint, abs_container,
        credential={"account_name": azurite_server.account, "account_key": wrong},
    )
    with pytest.raises(HttpResponseError) as ei:
        list(cc.list_blobs())
    assert ei.value.status_code == 403


def test_tmp_home(tmp_home):
    from pathlib import Path

    assert Path.home() == tmp_home
