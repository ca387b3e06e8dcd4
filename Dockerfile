# Multi-stage build of the orderbridge binaries. The build needs nothing from the network but
# crates.io (Swagger UI is vendored into the binary).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Exactly the workspace's binaries, by name (crates/bench/tests/compose.rs keeps this list equal to
# `cargo metadata`'s): the cached target/ may also hold binaries of crates since removed, which a
# copy of "every executable" would ship.
ARG BINS="order-api outbox-relay sync-worker sf-emulator sf-subscriber fulfilment-worker fulfilment-receiver orderbridge orderbridge-bench"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked $(for b in $BINS; do printf -- '--bin %s ' "$b"; done) \
    && mkdir -p /out \
    && for b in $BINS; do cp "target/release/$b" /out/; done

FROM debian:bookworm-slim
# curl for container health checks; ca-certificates for TLS to Salesforce.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# The emulator's dev catalogue (SF_EMULATOR_SEED_FILE in docker-compose.yml).
COPY config/ /etc/orderbridge/
# The emulator's saved org (SF_EMULATOR_DATA_FILE in docker-compose.yml): a named volume mounted
# here starts with this directory's owner, so the unprivileged user can write it.
RUN mkdir -p /var/lib/sf-emulator && chown 10001:10001 /var/lib/sf-emulator
USER 10001:10001
ENV LOG_FORMAT=json
CMD ["order-api"]
