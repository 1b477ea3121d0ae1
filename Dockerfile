# Both ferrolb binaries in one small image. Build: docker build -t ghcr.io/ferrolb/ferrolb:0.1.0 .
# The chart runs /usr/local/bin/ferrolb-controller (as UID 65532) and /usr/local/bin/ferrolb-speaker (as root
# with CAP_NET_RAW only) from it.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ferrolb-controller -p ferrolb-speaker -p ferrolb-cli \
 && install -D -m 0755 target/release/ferrolb-controller /out/ferrolb-controller \
 && install -D -m 0755 target/release/ferrolb-speaker /out/ferrolb-speaker \
 && install -D -m 0755 target/release/ferrolb /out/ferrolb \
 && install -D -m 0755 target/release/ferrolb-frr /out-frr/ferrolb-frr

# keepalived mode: the speaker with keepalived beside it (the chart's speaker.keepalived.image).
# Build: docker build --target keepalived -t ghcr.io/ferrolb/ferrolb-keepalived:0.1.0 .
FROM debian:bookworm-slim AS keepalived
RUN apt-get update \
 && apt-get install -y --no-install-recommends keepalived \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ferrolb-speaker /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/ferrolb-speaker"]

# BGP mode: FRR (zebra, bgpd, bfdd) beside the speaker, run by ferrolb-frr (the chart's speaker.frr.image).
# The daemons run as root, limited by the pod's capabilities; FRR opens its vty sockets to its vty group only.
# Build: docker build --target frr -t ghcr.io/ferrolb/ferrolb-frr:0.1.0 .
FROM debian:bookworm-slim AS frr
RUN apt-get update \
 && apt-get install -y --no-install-recommends frr \
 && rm -rf /var/lib/apt/lists/* \
 && usermod -a -G frrvty root
COPY --from=build /out-frr/ferrolb-frr /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/ferrolb-frr"]

# The default target: glibc, CA certificates and nothing else (no shell, no package manager).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/ /usr/local/bin/
# The controller's user; the chart overrides it for the speaker, which needs root for CAP_NET_RAW.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ferrolb-controller"]
