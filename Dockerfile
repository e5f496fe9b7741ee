# The `orders` binary in a small image. Used by docker-compose.yml.
FROM rust:1.95-bookworm AS build
# rdkafka builds its bundled librdkafka with these.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config python3 zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p orders-cli --bin orders

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/orders /usr/local/bin/orders
USER 10001
EXPOSE 8080 8081 9100
ENTRYPOINT ["orders"]
CMD ["run"]
