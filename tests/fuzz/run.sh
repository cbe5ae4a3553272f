#!/usr/bin/env bash
# Fuzzes one target for a bounded time: tests/fuzz/run.sh [TARGET] [SECONDS]
#   TARGET: jwt_verify (default) or path_normalise; SECONDS: default 60.
#   (A lone number is taken as SECONDS for jwt_verify, as before.)
#
# Needs a nightly toolchain (exits 2 with a clear message without one). Uses cargo-fuzz when
# installed; otherwise builds the same target with the sanitizer-coverage flags cargo-fuzz
# would pass and runs the libFuzzer binary directly. Seeds: seeds/TARGET (for jwt_verify,
# PyJWT-minted tokens), copied into corpus/TARGET (git-ignored), where libFuzzer keeps what it
# finds. dicts/TARGET.dict, when present, is passed as a libFuzzer dictionary. Crashes land
# in artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")"
target=jwt_verify
if [[ $# -gt 0 && ! "$1" =~ ^[0-9]+$ ]]; then
    target="$1"
    shift
fi
secs="${1:-60}"
case "$target" in
    jwt_verify) max_len=9000 ;;
    path_normalise) max_len=512 ;;
    *) echo "run.sh: unknown target '$target' (jwt_verify, path_normalise)" >&2; exit 2 ;;
esac
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "run.sh: a nightly Rust toolchain is required (rustup toolchain install nightly)" >&2
    exit 2
fi
mkdir -p "corpus/$target" "artifacts/$target"
if [[ -d "seeds/$target" ]]; then
    cp -n "seeds/$target"/* "corpus/$target/"
fi
fuzz_args=(-max_total_time="$secs" -max_len="$max_len" -artifact_prefix="artifacts/$target/")
if [[ -f "dicts/$target.dict" ]]; then
    fuzz_args+=(-dict="dicts/$target.dict")
fi
if cargo +nightly fuzz --version >/dev/null 2>&1; then
    exec cargo +nightly fuzz run --fuzz-dir . "$target" "corpus/$target" -- "${fuzz_args[@]}"
fi
echo "run.sh: cargo-fuzz not installed; building with sanitizer-coverage flags directly" >&2
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS off build scripts, as cargo-fuzz does.
host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
cargo +nightly build --release --target "$host" --bin "$target"
exec "target/$host/release/$target" "corpus/$target" "${fuzz_args[@]}"
