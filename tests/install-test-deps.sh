#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine, only where missing:
# - python3 (loadtest/openai_check.sh);
# - promtool (Debian package `prometheus`): tests/admin.rs checks the /metrics exposition
#   with it, and fails rather than skips when it is missing and CI is set.
set -euo pipefail
need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v promtool >/dev/null || need_apt+=(prometheus)
# tests/quota_redis.rs starts its own redis-server on a loopback port.
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# tests/tls.rs runs the official `openai` client over HTTPS.
if ! python3 -c 'import openai' 2>/dev/null; then
  python3 -m pip install --quiet openai || python3 -m pip install --quiet --break-system-packages openai
fi
