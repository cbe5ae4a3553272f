#!/usr/bin/env bash
# Fuzzes the JWT verify path for a bounded time (default 60 s): tests/fuzz/run.sh [SECONDS]
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); exits non-zero with
# a clear message when either is missing. Seeds: seeds/jwt_verify (PyJWT-minted tokens), copied
# into corpus/ (git-ignored), where libFuzzer keeps what it finds.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "run.sh: a nightly toolchain is required (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "run.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
    exit 2
fi
mkdir -p corpus/jwt_verify
cp -n seeds/jwt_verify/* corpus/jwt_verify/
exec cargo +nightly fuzz run --fuzz-dir . jwt_verify corpus/jwt_verify -- \
    -max_total_time="$secs" -max_len=9000
