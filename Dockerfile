# poolside's container image: built with the project's own scripts on
# Debian 12, run on debian:12-slim with only the runtime libraries listed in
# scripts/runtime-deps.txt (the same list scripts/install-deps installs).
#
#   docker build -t poolside:0.1.0 .
#
# Runs as the non-root user 65532 and writes nothing to its filesystem, so it
# works with readOnlyRootFilesystem: true. Configured by GRPC_* environment
# variables (`docker run --rm poolside:0.1.0 --help`). Also holds the demo's
# echo upstream and client, used by the example manifests in k8s/.

FROM debian:12 AS build
WORKDIR /src
# The dependency layer is rebuilt only when the package lists change; it holds
# what the build needs, not the test and benchmark tooling of deps.txt.
COPY scripts/install-deps scripts/build-deps.txt scripts/runtime-deps.txt scripts/
RUN scripts/install-deps --build-only && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake --preset release -DPOOLSIDE_BUILD_BENCH=OFF \
    && cmake --build --preset release --target poolside demo_upstream demo_client \
    && strip --strip-unneeded build-release/poolside \
       build-release/demo/demo_upstream build-release/demo/demo_client

FROM debian:12-slim
COPY scripts/runtime-deps.txt /tmp/runtime-deps.txt
# The same parsing as scripts/install-deps: one package a line, '#' comments.
RUN apt-get update \
    && sed -e 's/#.*//' -e '/^[[:space:]]*$/d' /tmp/runtime-deps.txt | awk '{print $1}' \
       | xargs apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-deps.txt \
    && groupadd --system --gid 65532 poolside \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin poolside
COPY --from=build /src/build-release/poolside /usr/local/bin/poolside
COPY --from=build /src/build-release/demo/demo_upstream /src/build-release/demo/demo_client /usr/local/bin/
USER 65532:65532
# 15001: gRPC from the app (GRPC_LISTEN_ADDR); 15090: HTTP /metrics, /healthz,
# /readyz, /pool (GRPC_ADMIN_ADDR).
EXPOSE 15001 15090
# poolside drains on SIGTERM for up to GRPC_SHUTDOWN_GRACE_SECS, then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/poolside"]
