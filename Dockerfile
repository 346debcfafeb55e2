# payq worker image: payq-worker, payq-publish, payq-dlq and the SQL migrations.
#
#   docker build -t payq:dev .        (compose.yaml does this for you)
#
# Stage 1 builds with CMake against Debian 12's -dev packages and installs
# into a staging root; stage 2 is debian:12-slim with only the runtime
# libraries and that staging root, running as an unprivileged user.

FROM debian:12 AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        cmake gcc libc6-dev make pkg-config \
        librabbitmq-dev libpq-dev libjansson-dev libmicrohttpd-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPAYQ_TESTS=OFF \
        -DCMAKE_INSTALL_PREFIX=/usr/local \
    && cmake --build /build -j"$(nproc)" \
    && DESTDIR=/staging cmake --install /build --strip

FROM debian:12-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        librabbitmq4 libpq5 libjansson4 libmicrohttpd12 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --user-group --uid 10001 --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin payq
# bin/payq-worker, bin/payq-publish, bin/payq-dlq, share/payq/sql/*.sql,
# share/payq/rabbitmq/*
COPY --from=build /staging/usr/local/ /usr/local/
# Where `payq-worker migrate` finds the migrations in an installed tree.
ENV PAYQ_SQL_DIR=/usr/local/share/payq/sql
USER payq
# The worker drains on SIGTERM (stop consuming, finish in-flight work, exit 0).
# Prometheus /metrics, /healthz, /readyz (PAYQ_METRICS_ADDRESS=0.0.0.0 to reach it).
EXPOSE 9464
STOPSIGNAL SIGTERM
CMD ["payq-worker", "run"]
