# Keyway's container image: the shipped binary (profile `dist`: fat LTO, stripped)
# on a distroless base with glibc and CA certificates and nothing else: no shell, no
# package manager. It runs as the base's non-root user (65532).
#
#   docker build -t keyway .
#   docker run -d --name keyway -p 127.0.0.1:7070:7070 \
#     -v keyway-data:/var/lib/keyway -v "$PWD/keyway.toml:/etc/keyway/keyway.toml:ro" keyway
#   docker exec keyway keyway token issue --config /etc/keyway/keyway.toml --service billing --principal alice
#
# The demo (its gateway binds loopback, so it shares the host's network):
#
#   docker run --rm -it --network host keyway demo --dir /tmp/keyway-demo
#
# No Docker engine runs where Keyway's CI runs: the suite lints this file with
# hadolint and assembles the runtime stage's files into a root of its own, started
# there as user 65532 with no shell (crates/keyway/tests/container.rs).

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked -p keyway \
 && objcopy --strip-debug --strip-unneeded target/dist/keyway /keyway \
 && mkdir -p /data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /keyway /usr/bin/keyway
COPY packaging/container.toml /etc/keyway/keyway.toml
# The data folder, the user's own: a new volume takes its owner from here.
COPY --from=build --chown=65532:65532 /data /var/lib/keyway
WORKDIR /var/lib/keyway
VOLUME ["/var/lib/keyway"]
EXPOSE 7070
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=6s --start-period=30s --retries=3 \
  CMD ["/usr/bin/keyway", "health", "--config", "/etc/keyway/keyway.toml"]
ENTRYPOINT ["/usr/bin/keyway"]
CMD ["gateway", "--config", "/etc/keyway/keyway.toml"]
