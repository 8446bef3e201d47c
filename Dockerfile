# Build wheels in a full image, run from a slim one with no compiler and no shell needs.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl && rm -rf /wheels
USER 65532:65532
EXPOSE 8000 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["drain-proxy"]
