# A container image of keycap: one binary that runs `keycap gateway`, `keycap admin` or
# `keycap up` against a Postgres given by KEYCAP_DATABASE__URL (the image holds no Postgres).
# See docs/deployment.md.
#
#   docker build -t keycap .
#   docker run --rm -p 8080:8080 -p 9464:9464 \
#     -e KEYCAP_DATABASE__URL=postgres://keycap:...@db/keycap -e KEYCAP_ENCRYPTION_KEY=... \
#     keycap gateway
#   docker run --rm -p 3000:3000 -e ... keycap admin

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p keycap \
 && install -m 0755 target/release/keycap /usr/local/bin/keycap

FROM debian:bookworm-slim
# The gateway checks an https upstream against the system's root certificates.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/keycap --create-home keycap
COPY --from=build /usr/local/bin/keycap /usr/local/bin/keycap
COPY config/keycap.toml /etc/keycap/keycap.toml
USER keycap
WORKDIR /var/lib/keycap
# Inside a container every listener must be reachable from outside it.
ENV KEYCAP_DATA_DIR=/var/lib/keycap \
    KEYCAP_GATEWAY__LISTEN=0.0.0.0:8080 \
    KEYCAP_METRICS__LISTEN=0.0.0.0:9464 \
    KEYCAP_ADMIN__LISTEN=0.0.0.0:3000
EXPOSE 8080 9464 3000
ENTRYPOINT ["/usr/local/bin/keycap", "--config", "/etc/keycap/keycap.toml"]
CMD ["up"]
