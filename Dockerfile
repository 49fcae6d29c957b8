# syntax=docker/dockerfile:1
#
# etcd-backup-restore: the backup/restore sidecar for etcd (console command `etcdbrctl`).
#
#   docker build -t etcd-backup-restore:0.1.0 .
#
# The image runs as an unprivileged user and writes nothing to its own filesystem: run it with a
# read-only root filesystem and give it a writable /tmp plus the etcd data volume (see
# deploy/kubernetes/). The etcd binaries that restores run (etcd for the temporary member,
# etcdutl for `snapshot restore`, etcdctl for operators) are those of the official etcd release
# image, at the version the cluster runs: keep the tag below equal to the etcd image of your
# StatefulSet (tests/unit/test_deploy.py checks the manifests shipped here).
#
# Image names are written out rather than passed as build ARGs so that hadolint can check their
# tags and registries.

# -- etcd release: the binaries as the etcd project publishes them in its image (no download and
#    checksum of our own); add @sha256:<digest> for byte-for-byte reproducible builds
FROM gcr.io/etcd-development/etcd:v3.5.27 AS etcd

# -- build: install the project and its dependencies into a virtualenv that is copied as a whole
FROM python:3.11-slim-trixie AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/etcdbr
WORKDIR /src
# .dockerignore admits only pyproject.toml, README.md, requirements.lock and src/.
COPY . .
# The dependencies come from requirements.lock (scripts/lock): exact versions, each file checked
# against its hash, for every provider and codec (the "all" extra: s3, gcs, abs, zstd) and the
# build backend; then the project itself, built with that backend and nothing else fetched.
# Every dependency ships wheels for linux amd64/arm64, so no compiler is needed even here.
# pip, setuptools and wheel leave the venv afterwards: the runtime image installs nothing.
RUN /opt/etcdbr/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r requirements.lock \
 && /opt/etcdbr/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
 && /opt/etcdbr/bin/python -m pip uninstall --yes pip setuptools wheel \
 && /opt/etcdbr/bin/etcdbrctl --help > /dev/null

# -- runtime: the slim Python base, the venv and the etcd binaries; no package manager runs here
FROM python:3.11-slim-trixie
LABEL org.opencontainers.image.title="etcd-backup-restore" \
      org.opencontainers.image.description="Backup and restore sidecar for etcd, with dual-endpoint snapshot sync" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed, non-root id (the distroless "nonroot" one) that pod specs can name in runAsUser/fsGroup.
RUN groupadd --system --gid 65532 etcdbr \
 && useradd --system --uid 65532 --gid etcdbr --home-dir /var/etcd --no-create-home \
            --shell /usr/sbin/nologin etcdbr
COPY --from=build /opt/etcdbr /opt/etcdbr
COPY --from=etcd /usr/local/bin/etcd /usr/local/bin/etcdutl /usr/local/bin/etcdctl /usr/local/bin/
# Bytecode was compiled at install time; writing more would fail on a read-only root filesystem.
ENV PATH=/opt/etcdbr/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ETCD_BIN_DIR=/usr/local/bin \
    HOME=/var/etcd
WORKDIR /var/etcd
USER 65532:65532
# HTTP API (health, snapshots, initialization, /metrics)
EXPOSE 8080
ENTRYPOINT ["/opt/etcdbr/bin/etcdbrctl"]
CMD ["--help"]
