# The one FastIM image: `fastim <component>` (gateway, logic, idgen, lsb, operator, ...).
#
#   docker build -t fastim:dev .
#
# Stage 1 builds the release binary (protoc and its well-known types, libprotobuf-dev,
# are needed by the protobuf code generation);
# stage 2 is a small Debian runtime with only the binary and CA certificates, run as
# an unprivileged user.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p fastim && strip target/release/fastim

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home fastim
COPY --from=build /src/target/release/fastim /usr/local/bin/fastim
USER 10001
# Client TCP and WebSocket (gateway), internal gRPC ports, HTTP health/metrics, and the
# operator's HTTP port.
EXPOSE 7000 7001 7010 7020 7030 7080 7090 7095 8080
ENTRYPOINT ["/usr/local/bin/fastim"]
CMD ["--help"]
