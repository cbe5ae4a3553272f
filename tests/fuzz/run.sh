#!/usr/bin/env bash
# Fuzzes one target, or every target in turn, each for a bounded time (default 60 s):
#
#   tests/fuzz/run.sh [TARGET|all] [SECONDS]     e.g. run.sh request_head 600
#   tests/fuzz/run.sh SECONDS                    every target, SECONDS each
#
# The targets are the `[[bin]]` names in Cargo.toml. Needs a nightly toolchain (exits 2 with a
# clear message without one). Uses cargo-fuzz when installed; otherwise builds the targets with
# the sanitizer-coverage and AddressSanitizer flags cargo-fuzz would pass and runs the
# libFuzzer binaries directly. One libFuzzer process at a time (no -jobs/-workers). Seeds:
# seeds/<target>/, copied into corpus/<target>/ (git-ignored), where libFuzzer keeps what it
# finds; dicts/<target>.dict, when present, is a libFuzzer dictionary. Crashes land in
# artifacts/<target>/, with the run's log as artifacts/<target>/fuzz.log
# (its last lines hold libFuzzer's final stats: executions, corpus size). Exits non-zero on
# the first target that crashes.
set -euo pipefail
cd "$(dirname "$0")"
target="${1:-all}"
secs="${2:-60}"
if [[ "$target" =~ ^[0-9]+$ ]]; then
    secs="$target"
    target=all
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "run.sh: a nightly Rust toolchain is required (rustup toolchain install nightly)" >&2
    exit 2
fi
mapfile -t all_targets < <(awk '/^\[\[bin\]\]/ { bin = 1; next } bin && /^name *=/ { gsub(/[" ]/, "", $0); sub(/^name=/, "", $0); print; bin = 0 }' Cargo.toml)
if [[ "$target" == all ]]; then
    targets=("${all_targets[@]}")
elif printf '%s\n' "${all_targets[@]}" | grep -qx "$target"; then
    targets=("$target")
else
    echo "run.sh: unknown target '$target' (targets: ${all_targets[*]})" >&2
    exit 2
fi

# Longest input per target: a JWT with an RSA signature needs ~9 KB; the HTTP and body
# targets check every prefix or split point, so short inputs keep them fast.
max_len() {
    case "$1" in
        jwt_verify) echo 9000 ;;
        json_body | sse_usage | adapt_sse) echo 8192 ;;
        path_normalise) echo 512 ;;
        *) echo 4096 ;;
    esac
}

host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
use_cargo_fuzz=0
if cargo +nightly fuzz --version >/dev/null 2>&1; then
    use_cargo_fuzz=1
else
    echo "run.sh: cargo-fuzz not installed; building with sanitizer-coverage flags directly" >&2
    export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks \
-Zsanitizer=address"
    # An explicit --target keeps RUSTFLAGS off build scripts and proc macros, as cargo-fuzz does.
    bins=()
    for t in "${targets[@]}"; do bins+=(--bin "$t"); done
    cargo +nightly build --release --target "$host" "${bins[@]}"
fi

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    if [[ -d "seeds/$t" ]]; then
        cp -n "seeds/$t"/* "corpus/$t/"
    fi
    fuzz_args=(-max_total_time="$secs" -max_len="$(max_len "$t")" -print_final_stats=1
        -artifact_prefix="artifacts/$t/")
    if [[ -f "dicts/$t.dict" ]]; then
        fuzz_args+=(-dict="dicts/$t.dict")
    fi
    echo "run.sh: fuzzing $t for ${secs}s (log: tests/fuzz/artifacts/$t/fuzz.log)" >&2
    if [[ "$use_cargo_fuzz" == 1 ]]; then
        cmd=(cargo +nightly fuzz run --fuzz-dir . "$t" "corpus/$t" -- "${fuzz_args[@]}")
    else
        cmd=("target/$host/release/$t" "corpus/$t" "${fuzz_args[@]}")
    fi
    if ! "${cmd[@]}" 2>&1 | tee "artifacts/$t/fuzz.log"; then
        echo "run.sh: $t crashed; see artifacts/$t/ and its fuzz.log" >&2
        exit 1
    fi
    echo "run.sh: $t: $(grep -o 'stat::number_of_executed_units: [0-9]*' "artifacts/$t/fuzz.log" | tail -1)," \
        "corpus $(find "corpus/$t" -type f | wc -l) files, no crash" >&2
done
