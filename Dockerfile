# Build: docker build -t bandwidth-forwarder .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin bandwidth-forwarder

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/bandwidth-forwarder /usr/local/bin/bandwidth-forwarder
COPY config/default.toml /etc/bandwidth-forwarder/config.toml
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=2s CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["bandwidth-forwarder"]
CMD ["serve", "--config", "/etc/bandwidth-forwarder/config.toml"]
