#!/usr/bin/env bash
# Fuzzes the JWT verify path for a bounded time (default 60 s): tests/fuzz/run.sh [SECONDS]
#
# Needs a nightly toolchain (exits 2 with a clear message without one). Uses cargo-fuzz when
# installed; otherwise builds the same target with the sanitizer-coverage flags cargo-fuzz
# would pass and runs the libFuzzer binary directly. Seeds: seeds/jwt_verify (PyJWT-minted
# tokens), copied into corpus/ (git-ignored), where libFuzzer keeps what it finds. Crashes
# land in artifacts/.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "run.sh: a nightly Rust toolchain is required (rustup toolchain install nightly)" >&2
    exit 2
fi
mkdir -p corpus/jwt_verify artifacts/jwt_verify
cp -n seeds/jwt_verify/* corpus/jwt_verify/
fuzz_args=(-max_total_time="$secs" -max_len=9000 -artifact_prefix=artifacts/jwt_verify/)
if cargo +nightly fuzz --version >/dev/null 2>&1; then
    exec cargo +nightly fuzz run --fuzz-dir . jwt_verify corpus/jwt_verify -- "${fuzz_args[@]}"
fi
echo "run.sh: cargo-fuzz not installed; building with sanitizer-coverage flags directly" >&2
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS off build scripts, as cargo-fuzz does.
host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
cargo +nightly build --release --target "$host" --bin jwt_verify
exec "target/$host/release/jwt_verify" corpus/jwt_verify "${fuzz_args[@]}"
