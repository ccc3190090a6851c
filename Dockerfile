# The baton gateway in a small image: a Rust builder compiles `baton` (and the image's health
# probe), and the runtime stage adds only them, the CA certificates and a state folder to its
# base. The runtime stage runs nothing at build time, so its base needs no package manager;
# at run time the `exec` adapter runs commands under the base's /bin/sh.
#
#   docker build -t baton .
#   docker run -p 8080:8080 -v "$PWD/baton.toml:/etc/baton/baton.toml:ro" baton
#
# The config must listen on all interfaces (`[server] listen = "0.0.0.0:8080"`). The process
# runs as uid 10001; /var/lib/baton (a volume) is the only place it writes, so the container
# can run with `--read-only` and a SQLite database goes there
# (`[store] url = "sqlite:///var/lib/baton/baton.db"`). See docs/deploy.md.

# The toolchain the tree is built and tested with.
ARG RUST_IMAGE=rust:1.95-bookworm
# The same Debian release as the builder, so the binary finds the C library it was linked
# against.
ARG RUNTIME_BASE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p baton-cli \
    && mkdir -p /out/bin /out/state \
    && cp target/release/baton /out/bin/baton \
    && rustc --edition 2024 -O -o /out/bin/baton-healthcheck deploy/docker/healthcheck.rs

FROM ${RUNTIME_BASE} AS runtime
# For outbound TLS (PostgreSQL with sslmode, adapters, relays): the slim base has none.
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/bin/ /usr/local/bin/
COPY --from=builder --chown=10001:10001 /out/state/ /var/lib/baton/
USER 10001:10001
ENV HOME=/var/lib/baton
WORKDIR /var/lib/baton
# The SQLite database (`sqlite:///var/lib/baton/baton.db`) and the exec adapter's state
# (`engine.exec_state_dir`) belong here, outside the image.
VOLUME ["/var/lib/baton"]
EXPOSE 8080
# Liveness only: `/readyz` also reports the store, and a database outage must not get a
# container restarted (it answers 503 and recovers by itself). The probe asks
# http://127.0.0.1:8080/healthz; a gateway listening on another port sets
# BATON_HEALTHCHECK_URL on the container.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["baton-healthcheck"]
ENTRYPOINT ["baton"]
CMD ["serve", "--config", "/etc/baton/baton.toml"]
