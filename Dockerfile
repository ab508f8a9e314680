# syntax=docker/dockerfile:1.7
#
# One small image with the one `policybind` binary; every role runs it:
#   policybind controller | webhook | sidecar | serve | test | eval | audit ...
# The chart passes the role as the first argument (no `command:` override).
#
#   docker build -t ghcr.io/policybind/policybind:dev .
#
# Build stage: the same toolchain CI uses; TLS is rustls + ring, so nothing
# links against OpenSSL and the runtime needs only glibc and libgcc.
ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p policybind --bin policybind \
 && install -D -m 0755 target/release/policybind /out/policybind \
 && strip /out/policybind

# Runtime stage: distroless (glibc, CA certificates, no shell, no package
# manager), as the distroless `nonroot` user (65532), the same UID the chart's
# securityContext asks for.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="policybind" \
      org.opencontainers.image.description="PolicyBind: AI model governance for Kubernetes (controller, webhook, sidecar, CLI)" \
      org.opencontainers.image.source="https://github.com/policybind/policybind" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/policybind /usr/local/bin/policybind
# glibc malloc with a fixed mmap threshold: buffers of 128 KiB and more (audit
# segments, queue chunks) go back to the kernel when freed. glibc's default
# raises the threshold after such a free, keeps later buffers in per-thread
# arenas, and an audit writer under sustained overload then holds 80 to 110 MiB
# instead of 35 to 45 MiB (docs/audit.md, "Performance").
ENV MALLOC_MMAP_THRESHOLD_=131072
USER 65532:65532
EXPOSE 8080 8081 8443 8480
ENTRYPOINT ["/usr/local/bin/policybind"]
CMD ["--help"]
