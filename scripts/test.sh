#!/usr/bin/env bash
# Runs Wake's full test suite: unit tests of every crate and the end-to-end tests in tests/,
# which spawn the real `wake` binary and talk to it with real OpenTelemetry SDKs.
# Installs what the end-to-end tests need first: podman, runc and busybox-static from Debian (real
# containers for the agent's tests), prometheus from Debian (the reference the PromQL
# compatibility tests and the rule tests compare against, promtool included),
# prometheus-alertmanager (the ruler's tests send it alerts, over TLS with openssl's certificates) and, from PyPI, the Python OpenTelemetry SDK and the
# validators of the deployment files (kubernetes-validate, dockerfile-parse).
set -euo pipefail
cd "$(dirname "$0")/.."

# Build products and the Python environment live outside the checkout so that a later run on
# the same machine reuses them; a fresh machine simply builds them.
cache_dir="${WAKE_CACHE_DIR:-/var/tmp/wake-cache}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/wake-target}"
mkdir -p "$cache_dir"

if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! [ -x /bin/busybox ] \
    || ! command -v prometheus >/dev/null || ! command -v prometheus-alertmanager >/dev/null \
    || ! command -v openssl >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq podman runc busybox-static prometheus prometheus-alertmanager openssl >/dev/null
fi

venv="$cache_dir/venv"
if ! "$venv/bin/python" -c 'import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc, opentelemetry.exporter.otlp.proto.http' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check opentelemetry-sdk opentelemetry-exporter-otlp
fi
# tests/deploy.rs validates deploy/kubernetes/ with kubernetes-validate (it bundles the
# Kubernetes OpenAPI schemas, so it works offline) and parses the Containerfile with
# dockerfile-parse.
if ! "$venv/bin/python" -c 'import kubernetes_validate, dockerfile_parse' 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 dockerfile-parse==2.0.1
fi
export WAKE_TEST_PYTHON="$venv/bin/python"

cargo test --workspace --locked "$@"
