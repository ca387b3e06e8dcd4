# Multi-stage build of the orderbridge binaries. The build needs nothing from the network but
# crates.io (Swagger UI is vendored into the binary).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && find target/release -maxdepth 1 -type f -executable -exec cp {} /out/ \;

FROM debian:bookworm-slim
# curl for container health checks; ca-certificates for TLS to Salesforce.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# The emulator's dev catalogue (SF_EMULATOR_SEED_FILE in docker-compose.yml).
COPY config/ /etc/orderbridge/
USER 10001:10001
ENV LOG_FORMAT=json
CMD ["order-api"]
