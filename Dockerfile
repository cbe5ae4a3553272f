# syntax=docker/dockerfile:1
#
# shardgate: a release build on the Rust image, run from debian:bookworm-slim as an
# unprivileged user. deploy/check-dockerfile.sh runs this file's build and check commands
# outside docker (same context rules, same cargo invocation, same config checks).
#
#   docker build -t shardgate .
#   docker run --rm -v "$PWD/gw.toml:/etc/shardgate/gateway.toml:ro" shardgate \
#       check --config /etc/shardgate/gateway.toml                          # pre-start check
#   docker run -d --stop-timeout 45 -p 8080:8080 \
#       -v "$PWD/gw.toml:/etc/shardgate/gateway.toml:ro" -v shardgate-state:/var/lib/shardgate \
#       -e SHARDGATE_JWT_SECRET shardgate
#
# In a container the config must listen on 0.0.0.0 (or [::]), keep writable files (revocation
# file, access log) under /var/lib/shardgate, and --stop-timeout must exceed
# server.drain_timeout_ms. io_uring: Docker's default seccomp profile (Docker >= 25) blocks
# io_uring_setup; each worker then logs "io_uring unavailable (...); using the legacy epoll
# driver" and serves on epoll. README "Operations" shows how to allow it.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied out
# of the cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p shardgate --bin shardgate \
    && install -D -m 0755 target/release/shardgate /out/shardgate

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 shardgate \
    && useradd --system --uid 10001 --gid shardgate --home-dir /var/lib/shardgate \
        --no-create-home --shell /usr/sbin/nologin shardgate \
    && install -d -o shardgate -g shardgate -m 0750 /var/lib/shardgate
COPY --from=build /out/shardgate /usr/local/bin/shardgate
COPY config/ /etc/shardgate/
USER 10001:10001
WORKDIR /var/lib/shardgate
# The shipped configs must validate with the shipped binary on this image, as the unprivileged
# user, or the build fails (the example's secrets come from the environment: placeholders).
RUN shardgate check --config /etc/shardgate/demo.toml \
    && SHARDGATE_JWT_SECRET=build-check-placeholder-0123456789abcdef \
        SHARDGATE_HOSTED_API_KEY=build-check-placeholder \
        shardgate check --config /etc/shardgate/gateway.toml
# Gateway and admin API (config/gateway.toml's ports).
EXPOSE 8080 9901
# SIGTERM drains: stop accepting, finish requests in flight (server.drain_timeout_ms), exit 0.
STOPSIGNAL SIGTERM
# The admin API's liveness probe, without curl in the image; needs [admin] listen on port 9901
# (loopback is enough: the check runs inside the container). Override with --health-cmd.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["shardgate", "health", "--admin", "127.0.0.1:9901"]
ENTRYPOINT ["shardgate"]
CMD ["--config", "/etc/shardgate/gateway.toml"]
