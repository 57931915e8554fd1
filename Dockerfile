# acestream-edge container image: build with the Rust image, run on slim Debian as a non-root user.
#   docker build -t acestream-edge .
#   docker run -p 8000:8000 -v ./deploy/docker/acestream-edge.yaml:/etc/acestream-edge/acestream-edge.yaml:ro acestream-edge
# tests/deploy.rs runs this file's build command and runtime layout natively (no Docker daemon
# on the CI machine) and lints it with hadolint when it is installed.

FROM rust:1.95-bookworm AS build
# Pingora's zlib-ng build needs cmake. Debian's versions are not pinned: the base image pins
# the release, and a pinned point version disappears from the mirrors with the next update.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# jemalloc's settings (background purge), compiled into the binary.
COPY .cargo ./.cargo
COPY src ./src
COPY benches ./benches
COPY web ./web
COPY .git ./.git
RUN cargo build --release --locked --bin acestream-edge

FROM debian:bookworm-slim AS run
# curl answers the HEALTHCHECK; ca-certificates for https:// channel sources and guides.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin acestream-edge
COPY --from=build /src/target/release/acestream-edge /usr/local/bin/acestream-edge
COPY deploy/docker/acestream-edge.yaml /etc/acestream-edge/acestream-edge.yaml
USER 10001
EXPOSE 8000
# 200 while serving, 503 once shutdown began.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8000/healthz"]
# SIGTERM: sessions send their engine stops, then the process exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/acestream-edge"]
CMD ["-c", "/etc/acestream-edge/acestream-edge.yaml"]
