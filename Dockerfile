# syntax=docker/dockerfile:1
#
# One image with every paystream binary (api-ingress, risk-engine, psp-gateway, order-store,
# account-store, validator, psp-sim, payctl). Pick the binary with the container command
# (docker-compose.kafka.yml does: `command: ["risk-engine"]`), or bake a default with
#   docker build --build-arg BIN=risk-engine -t paystream-risk-engine .
#
# Native dev machines do not need this: scripts/infra.sh + cargo run do the same without Docker.

############################ builder ############################
FROM rust:1-bookworm AS builder
# rdkafka's default build compiles the bundled librdkafka (configure + make, no cmake);
# the buildpack-based rust image already has gcc, make, pkg-config, zlib and libssl headers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev libssl-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# queries are checked against a live database only in dev; the image build has none
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY . .
# cache mounts keep the registry and target dir between builds; binaries are copied out of the
# cache in the same step (the mount is not part of the image layer)
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    set -eux; \
    locked=""; if [ -f Cargo.lock ]; then locked="--locked"; fi; \
    cargo build --release --workspace --bins $locked; \
    mkdir -p /out/bin; \
    find target/release -maxdepth 1 -type f -perm -u+x -exec cp {} /out/bin/ \; ; \
    ls -l /out/bin

############################ runtime ############################
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin paystream
COPY --from=builder /out/bin/ /usr/local/bin/
# not needed at run time (schemas and migrations are compiled in) but handy for operators
COPY migrations /app/migrations
COPY schemas /app/schemas
WORKDIR /app
USER paystream

ARG BIN=api-ingress
ENV PAYSTREAM_BIN=${BIN} \
    PAYSTREAM_ADMIN_ADDR=0.0.0.0:9000 \
    PAYSTREAM_LOG_FORMAT=json \
    RUST_LOG=info
EXPOSE 8080 9000
# tini forwards SIGTERM so every service drains and commits on `docker stop`
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["/bin/sh", "-c", "exec \"/usr/local/bin/${PAYSTREAM_BIN}\""]
