# drain-proxy image: a multi-stage build on the official slim Python image.
#
#   docker build -t drain-proxy:0.1.0 .
#
# Stage 1 builds wheels for drain-proxy and its dependencies and installs them into a
# virtualenv. It uses the full python image for its C compiler: setup.py compiles drain-proxy's
# per-request modules with mypyc (uvloop and prometheus-client ship binary wheels).
# Both images are Debian bookworm with Python in /usr/local, so the compiled modules run in the
# slim image. Stage 2 copies only that virtualenv: no pip run, no build tools, no source tree,
# and nothing in it needs a shell at run time.

FROM python:3.11-bookworm AS build
# DRAIN_PROXY_REQUIRE_EXTENSIONS: a failed mypyc build fails the image build instead of
# shipping the slower pure-Python package unnoticed.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ONLY_BINARY=uvloop \
    DRAIN_PROXY_REQUIRE_EXTENSIONS=1
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY proxy ./proxy
# The adopt extra (ruamel.yaml) is for `drain-proxy check`, `inject` and `webhook`, which run
# from this image too; the sidecar itself never imports it.
RUN pip wheel --wheel-dir /wheels ".[adopt]" \
 && python -m venv /opt/drain-proxy \
 && /opt/drain-proxy/bin/pip install --no-index --find-links=/wheels "drain-proxy[adopt]" \
 && /opt/drain-proxy/bin/pip uninstall --yes pip setuptools

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="drain-proxy" \
      org.opencontainers.image.description="Reverse-proxy sidecar for zero-loss Kubernetes rollouts" \
      org.opencontainers.image.licenses="Apache-2.0"
# The virtualenv's python links to /usr/local/bin/python (and so to python3.11), in both stages.
COPY --from=build /opt/drain-proxy /opt/drain-proxy
ENV PATH="/opt/drain-proxy/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric user, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
# 8000: traffic (the Service's targetPort); 9901: admin (/livez, /readyz, /metrics, /drain).
EXPOSE 8000 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["drain-proxy"]
