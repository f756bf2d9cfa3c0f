# Multi-stage build of the production `sagaflow` binary (orchestrator,
# adapters, registry, CLI), without the local stack's test kit: no embedded
# broker, no demo, no bench (`--no-default-features`, crates/cli/Cargo.toml).
#   docker build -t sagaflow .
# The docker-compose demo adds the demo services and sample events:
#   docker build --build-arg SAGAFLOW_FEATURES=demo -t sagaflow-demo .
FROM rust:1.95-bookworm AS builder
ARG SAGAFLOW_FEATURES=""
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sagaflow-cli --no-default-features --features "$SAGAFLOW_FEATURES" \
 && cp target/release/sagaflow /usr/local/bin/sagaflow

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sagaflow \
 && useradd --system --uid 10001 --gid sagaflow --home-dir /opt/sagaflow --shell /usr/sbin/nologin sagaflow \
 && install -d -o 10001 -g 10001 /var/lib/sagaflow
COPY --from=builder /usr/local/bin/sagaflow /usr/local/bin/sagaflow
COPY topology/ /opt/sagaflow/topology/
COPY schemas/ /opt/sagaflow/schemas/
WORKDIR /opt/sagaflow
USER 10001:10001
EXPOSE 8080 9100
ENTRYPOINT ["/usr/local/bin/sagaflow"]
CMD ["--help"]
