"""The cloud SDKs and zstandard are optional (the extras of pyproject.toml): a Local-only install
works without them, and what needs a missing one says in one line how to install it.

"Not installed" is made real in a child interpreter whose import system refuses those packages,
so nothing imported earlier by the test process can hide a dependency.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest

from etcdbr.compression import compress_bytes, decompressing_reader
from etcdbr.errors import ConfigError

#: What the extras install (import names), and what the core must never import.
OPTIONAL = ("boto3", "botocore", "google.cloud", "google.auth", "google.api_core", "google.oauth2", "google_crc32c",
            "google_resumable_media", "requests", "azure", "zstandard")

_BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {blocked!r}

    class Uninstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Uninstalled())
""")
_CHILD = _BLOCKER + textwrap.dedent("""
    sys.argv = ["etcd-backup-restore", *{argv!r}]
    from etcdbr.cli.main import main
    try:
        main()
    finally:
        leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
        print("LEAKED", leaked, file=sys.stderr)
""")


def run_without(argv: list[str], blocked=OPTIONAL) -> subprocess.CompletedProcess:
    code = _CHILD.format(blocked=tuple(blocked), argv=list(argv))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if not line.startswith("LEAKED")]


def test_the_core_imports_without_optional_packages():
    """Every module but the providers' own imports with none of the optional packages installed."""
    code = _BLOCKER.format(blocked=OPTIONAL) + textwrap.dedent("""
        import etcdbr.config  # first: config takes the provider names from the snapstore package
        import importlib, pkgutil, etcdbr
        PROVIDER_MODULES = {"s3", "s3client", "gcs", "gcsclient", "abs"}
        names = [m.name for m in pkgutil.walk_packages(etcdbr.__path__, "etcdbr.")
                 if m.name.rsplit(".", 1)[-1] not in PROVIDER_MODULES]
        for name in names:
            importlib.import_module(name)
        print(len(names), "modules")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[0]) > 40


def test_a_local_store_needs_no_optional_package(tmp_path):
    result = run_without(["snapshot", "list", "--storage-provider=Local", f"--store-container={tmp_path}"])
    assert result.returncode == 0, result.stderr
    assert "LEAKED []" in result.stderr


@pytest.mark.parametrize("provider, extra", [("S3", "s3"), ("GCS", "gcs"), ("ABS", "abs")])
def test_a_provider_without_its_sdk_names_the_extra(tmp_path, provider, extra):
    result = run_without(["snapshot", "list", f"--storage-provider={provider}", "--store-container=bucket"])
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result)
    assert line.startswith(f"error: the {provider} store needs the Python package ")
    assert line.endswith(f"which is not installed: pip install 'etcd-backup-restore[{extra}]'")


def test_zstd_policy_without_zstandard_is_refused_at_start(tmp_path):
    result = run_without(["snapshot", "--storage-provider=Local", f"--store-container={tmp_path}",
                          "--compression-policy=zstd", "--endpoints=http://127.0.0.1:1"], blocked=("zstandard",))
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == ["error: zstd compression (.zst) needs the Python package 'zstandard', which is "
                                   "not installed: pip install 'etcd-backup-restore[zstd]'"]


def test_reading_a_zst_object_without_zstandard_names_the_extra(monkeypatch):
    payload = compress_bytes(b"etcd" * 100, "zstd")
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard now fails
    with pytest.raises(ConfigError, match=r"pip install 'etcd-backup-restore\[zstd\]'"):
        decompressing_reader(io.BytesIO(payload), ".zst").read()


def test_leases_without_lightkube_name_the_extra(tmp_path):
    from services import free_port

    result = run_without(["server", "--enable-snapshot-lease-renewal=true", "--endpoints=http://127.0.0.1:1",
                          "--server-host=127.0.0.1", f"--server-port={free_port()}"],
                         blocked=("lightkube", "httpx2"))
    assert result.returncode == 2, result.stderr
    assert error_lines(result)[-1:] == [
        "error: Kubernetes leases (--enable-snapshot-lease-renewal, --enable-member-lease-renewal) needs the Python "
        "package 'lightkube', which is not installed: pip install 'etcd-backup-restore[k8s]'"]
