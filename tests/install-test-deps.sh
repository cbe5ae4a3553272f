#!/usr/bin/env bash
# Installs what the integration tests need beyond cargo: promtool (Debian package
# `prometheus`), used by tests/admin.rs to check the /metrics exposition. With CI set, that
# test fails when promtool is missing. Idempotent; call it from .ci/run before the tests.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y --no-install-recommends prometheus
command -v promtool >/dev/null
