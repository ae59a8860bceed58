# Build: docker build -t bandwidth-forwarder .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Not built into the image: Cargo refuses a manifest whose [[bench]] target file is missing.
COPY benches ./benches
RUN cargo build --release --locked --bin bandwidth-forwarder

FROM debian:bookworm-slim
# CA roots for amqps:// brokers, and the image's sh for `consume --exec`. The base tag pins the
# release and Debian's security updates replace pinned package versions, so none is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin forwarder
COPY --from=build /src/target/release/bandwidth-forwarder /usr/local/bin/bandwidth-forwarder
COPY config/default.toml /etc/bandwidth-forwarder/config.toml
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s CMD ["bandwidth-forwarder", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["bandwidth-forwarder"]
CMD ["serve", "--config", "/etc/bandwidth-forwarder/config.toml"]
