# Multi-stage build: a release binary on a small non-root runtime image.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY protocols protocols
COPY src src
# Declared in Cargo.toml, so they must be present for the manifest to load.
COPY benches benches
COPY examples examples
# `ferry_build_info` names this commit (the context has no .git): --build-arg FERRY_COMMIT=…
ARG FERRY_COMMIT
ENV FERRY_COMMIT=${FERRY_COMMIT}
RUN cargo build --release --locked --bin ferry

FROM debian:bookworm-slim
# CA certificates: HTTPS, amqps, mqtts and NATS TLS targets without an explicit `ca` trust the
# system store. The data directory (file sinks, spools) belongs to the image's user.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/ferry --create-home ferry \
    && install -d -o ferry -g ferry -m 0750 /var/lib/ferry/data
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
COPY config/ferry.toml /etc/ferry/ferry.toml
WORKDIR /var/lib/ferry
USER ferry
# A named volume takes this directory's owner (uid 10001). For a bind mount, make the host
# directory writable by uid 10001 (`chown 10001 data`), or run with `--user "$(id -u):$(id -g)"`.
VOLUME /var/lib/ferry/data
# The default config reads these; inside a container, listen on every interface. The admin
# API stays on loopback unless a token is given: run with
#   -e FERRY_ADMIN_LISTEN=0.0.0.0:9090 -e FERRY_ADMIN_TOKEN=<secret>
# to reach it from outside (Ferry refuses a non-loopback admin listener without a token).
ENV FERRY_HTTP_LISTEN=0.0.0.0:8080 \
    FERRY_WS_LISTEN=0.0.0.0:8090 \
    FERRY_ADMIN_LISTEN=127.0.0.1:9090
EXPOSE 8080 8090 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
    CMD ["ferry", "probe", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["ferry"]
CMD ["run", "--config", "/etc/ferry/ferry.toml"]
