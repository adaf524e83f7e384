# syntax=docker/dockerfile:1
# copyai-exporter: a Prometheus exporter for Copy.ai workflow runs.
#
#   docker build -t copyai-exporter .
#   docker run -p 10117:10117 -e COPYAI_API_KEY \
#     -v ./config.yaml:/etc/copyai-exporter/config.yaml:ro \
#     -v copyai-exporter-state:/var/lib/copyai-exporter copyai-exporter
#
# Stage 1 builds wheels of the project and of every dependency (all have wheels for
# CPython 3.11 on Linux, so no compiler or apt is needed); stage 2 installs them from a
# bind mount of stage 1, so neither the wheels, the sources nor a pip cache end up in
# the image.

FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Only what the wheel is built from (README.md is the package's long description).
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
# requirements.txt pins the exporter (with its redis extra) to the version just built
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[redis]" \
    && python -c "import exporter; print(f'copyai-exporter[redis]=={exporter.__version__}')" \
       > /wheels/requirements.txt


FROM python:3.11-slim-bookworm

# Set SOURCE_URL to where this repository is published.
ARG SOURCE_URL=https://github.com/OWNER/copyai-exporter
LABEL org.opencontainers.image.title="copyai-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Copy.ai workflow runs" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Install from stage 1's wheels only (--no-index: nothing is fetched at this point), then
# add the unprivileged user: fixed UID/GID 10001 so that volume permissions can be set
# ahead of time, no login shell, no home directory beyond the state directory.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels -r /wheels/requirements.txt \
    && groupadd --system --gid 10001 copyai \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/copyai-exporter --shell /usr/sbin/nologin copyai \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/copyai-exporter \
    && install -d -m 0755 /etc/copyai-exporter

# state.path goes here (e.g. /var/lib/copyai-exporter/state.db); mount a volume on it
WORKDIR /var/lib/copyai-exporter
USER 10001:10001

# 10117: /metrics and /-/healthy; 10118: the webhook receiver, when configured
EXPOSE 10117 10118

# slim has no curl: ask /-/healthy with Python (fails on no answer or a non-2xx status)
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10117/-/healthy', timeout=3)"]

ENTRYPOINT ["copyai-exporter"]
CMD ["--config.file=/etc/copyai-exporter/config.yaml"]
