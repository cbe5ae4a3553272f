#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine, only where missing.
set -euo pipefail
need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
# tests/quota_redis.rs starts its own redis-server on a loopback port.
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq "${need_apt[@]}"
fi
