# tor2influxdb2: polls Tor control ports and writes their statistics to InfluxDB 2.
#
#   docker build -t tor2influxdb2 .
#   docker run -d --name tor2influxdb2 -e TOR_HOSTS=... -e INFLUX_URL=... -e INFLUX_ORGANIZATION=... \
#       -e INFLUX_BUCKET=... -e INFLUX_TOKEN_FILE=/run/secrets/influx_token ... tor2influxdb2
#   docker run --rm -e TOR_HOSTS=... tor2influxdb2 -t      # test mode: print the measurements, write nothing
#
# Every FROM uses BASE_IMAGE and no step calls apk or apt, so the same file builds on the official
# Alpine or Debian python images and on the stand-in base image the tests make (they cannot pull).
ARG BASE_IMAGE=python:3.13-alpine

# ---------------------------------------------------------------- dependencies
FROM ${BASE_IMAGE} AS deps
# Only for a build that must use another package index: these stay in this stage and never reach
# the final image (pass no credentials here that you would not want in the builder's cache).
ARG PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST
COPY requirements.txt /tmp/requirements.txt
# A venv without pip (pip itself would add ~10 MB): the base image's pip installs the pinned
# requirements into it, byte-compiled, so the daemon starts fast even on a read-only root.
RUN export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
 && python3 -m venv --without-pip /opt/tor2influxdb2/venv \
 && python3 -m pip --python /opt/tor2influxdb2/venv/bin/python3 install --no-warn-script-location \
        -r /tmp/requirements.txt

# ---------------------------------------------------------------- the image
FROM ${BASE_IMAGE}

COPY --from=deps /opt/tor2influxdb2/venv /opt/tor2influxdb2/venv
COPY tor_to_influxdb2.py healthcheck.sh /opt/tor2influxdb2/
COPY tor2influxdb2/ /opt/tor2influxdb2/tor2influxdb2/

# Where files live, so that both a plain `docker run` (as the fixed user below) and
# `docker run --read-only --tmpfs /tmp` work with no other flag:
# - the health file is /tmp/healthcheck (/tmp is writable by anyone in the image, and is the tmpfs
#   with --read-only). /healthcheck is a link to it, so containers that Watchtower recreated with
#   the old image's HEALTHCHECK (`grep OK /healthcheck`) keep working.
# - the durable point buffer is /var/lib/tor2influxdb2, owned by the daemon's user. Mount a volume
#   there to keep undelivered points across restarts (a named volume takes the owner from here).
#   With --read-only and no volume the daemon finds it unwritable and buffers in memory instead
#   (one warning in the log).
# The daemon runs as a module from bytecode compiled here (compiling the source at every start
# would add ~3.5 MB to its peak memory, see the README's benchmarks).
RUN /opt/tor2influxdb2/venv/bin/python3 -m compileall -q /opt/tor2influxdb2/tor_to_influxdb2.py \
        /opt/tor2influxdb2/tor2influxdb2 \
 && mkdir -p /var/lib/tor2influxdb2 \
 && chown 10001:10001 /var/lib/tor2influxdb2 \
 && chmod 0750 /var/lib/tor2influxdb2 \
 && ln -sfn /tmp/healthcheck /healthcheck

# Non-secret defaults only. There is deliberately no INFLUX_TOKEN, TOR_HOSTS or INFLUX_URL here:
# a missing one must be reported as missing (exit 2), not look set. Give secrets as files
# (INFLUX_TOKEN_FILE, TOR_HOSTS_FILE, e.g. Docker secrets under /run/secrets/).
ENV PATH=/opt/tor2influxdb2/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/tor2influxdb2 \
    RUN_EVERY_SECONDS=10 \
    INFLUX_SERVICE_TAG=tor \
    INFLUX_SEND_VERSION_TAG=true \
    VERBOSE=false \
    HEALTHCHECK_FILE=/tmp/healthcheck \
    BUFFER_DIR=/var/lib/tor2influxdb2

# A fixed numeric user that is not root (it needs no entry in /etc/passwd).
USER 10001:10001
WORKDIR /opt/tor2influxdb2

# healthcheck.sh is healthy when the health file says OK and is at most 3 periods old.
# Timings, for the default period of 10 s (first cycle at start, TOR_TIMEOUT 5 s):
# - healthy within 15 s of start: the first probe runs 5 s after start, then every 5 s; the first
#   cycle has written OK by ~6 s (start-up + at most TOR_TIMEOUT), so the probe at 5 s or 10 s finds
#   it, and one success ends the start period: healthy at <= 10 s. Failures in the 15 s start
#   period do not count.
# - unhealthy within 45 s of a fault: 2 failed probes 5 s apart are needed.
#   * tor or InfluxDB fails: the next cycle starts within 10 s and writes FAILED by 10 + 5 = 15 s;
#     failed probes follow by 20 s and 25 s -> unhealthy at <= 25 s.
#   * the daemon hangs or is frozen: its last OK (written at or before the fault) turns stale when it
#     is more than 30 s old (3 periods; whole seconds), i.e. by 31 s after the fault; failed probes
#     follow by 36 s and 41 s -> unhealthy at <= 41 s. (The daemon's own watchdog writes FAILED
#     after 3 periods when only its main loop hangs.)
# The original image probed every 30 s with 3 retries: 30 s to healthy, up to 90 s to unhealthy.
HEALTHCHECK --interval=5s --timeout=3s --start-period=15s --retries=2 \
    CMD ["/bin/sh", "/opt/tor2influxdb2/healthcheck.sh"]

# Exec form: the daemon is PID 1 and gets `docker stop`'s SIGTERM itself (it exits 0 within 2 s),
# and arguments after the image name reach it (`docker run IMAGE -t`).
# (ENTRYPOINT also clears the base image's CMD.)
ENTRYPOINT ["/opt/tor2influxdb2/venv/bin/python3", "-m", "tor_to_influxdb2"]

# OCI labels, filled from build args, last so that new values do not rebuild the layers above:
#   docker build --build-arg VERSION=$(git describe --tags --always) \
#       --build-arg REVISION=$(git rev-parse HEAD) \
#       --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) -t tor2influxdb2 .
ARG VERSION=dev REVISION=unknown CREATED=unknown \
    SOURCE=https://github.com/MightySlaytanic/tor2influxdb2 LICENSES=NOASSERTION
LABEL org.opencontainers.image.title="tor2influxdb2" \
      org.opencontainers.image.description="Polls Tor control ports and writes relay statistics to InfluxDB 2" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="${LICENSES}"
