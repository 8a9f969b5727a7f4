# syntax=docker/dockerfile:1
# The skiff image: one static-ish binary (`skiff`, linked against glibc only) on a distroless
# base, running as the non-root user 65532. Kubernetes runs it as
# `skiff site run --kubernetes ...` (deploy/deployment.yaml); see docs/kubernetes.md.
#
#   docker build -t skiff:latest .          (or: podman build, buildah bud; BuildKit needed)

FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace: cargo needs every member's manifest, and .cargo/config.toml picks the
# Kubernetes API version of k8s-openapi. .dockerignore keeps target/ and .git out.
COPY . .
# Cache mounts keep the registry and the build folder between builds. The binary is copied
# out of the cached target/ and its debug line tables dropped (64 MB -> 13 MB; function names
# stay for backtraces).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin skiff \
    && objcopy --strip-debug target/release/skiff /usr/local/bin/skiff

# glibc, libgcc, CA certificates and a `nonroot` user (65532); no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="skiff" \
      org.opencontainers.image.description="skiff: a Virtual Application Network router and site controller" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /usr/local/bin/skiff /usr/local/bin/skiff
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/skiff"]
CMD ["--help"]
