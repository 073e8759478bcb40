# syntax=docker/dockerfile:1
#
# meshdns image: a release build on Debian 12 (bookworm), run from distroless cc-debian12
# (glibc, libgcc_s and CA certificates; no shell, no package manager) as user 65532.
#
#   docker build -t meshdns:0.1.0 .
#
# The binary listens on 1053 (DNS, UDP and TCP) and 9153 (ops HTTP) as configured by
# deploy/base/meshdns.yaml; the Service maps port 53 to 1053, so the container needs no
# capability at all (docs/install.md, "Port 53").

# The toolchain CI builds and tests with; at least Cargo.toml's rust-version.
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
# Only what the build reads (a workspace: the fake API server and the fake Pub/Sub are
# members, the benches declared targets); .dockerignore keeps target/ and .git out of the
# context.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests/fake-apiserver ./tests/fake-apiserver
COPY tests/fake-pubsub ./tests/fake-pubsub
# The registry and target/ are cache mounts (BuildKit), so the binary is copied out of the
# cache into /out, which the runtime stage takes.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin meshdns \
    && install -D -m 0755 target/release/meshdns /out/meshdns

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/meshdns /usr/local/bin/meshdns
# Numeric, so that runAsNonRoot can check it (distroless's "nonroot" user).
USER 65532:65532
EXPOSE 1053/udp 1053/tcp 9153/tcp
ENTRYPOINT ["/usr/local/bin/meshdns"]
CMD ["serve", "--config", "/etc/meshdns/config/meshdns.yaml"]
