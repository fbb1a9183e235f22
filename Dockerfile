# The CacheManager service: built with the official Rust image, run on
# distroless (glibc and libgcc only, no shell) as a non-root user.
#   docker build -t cachemanager .
#   docker run -p 8000:8000 cachemanager
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p app \
 && strip target/release/cachemanager

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/cachemanager /usr/local/bin/cachemanager
ENV CACHEMANAGER__SERVER__HOST=0.0.0.0
EXPOSE 8000
USER nonroot:nonroot
# Where the embedded SQLite store lives when no DATABASE_URL is given
# (data/cachemanager.db): mount a volume here to keep it.
WORKDIR /home/nonroot
# No curl in the image: the binary probes /health/live itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/cachemanager", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/cachemanager"]
