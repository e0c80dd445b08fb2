# patterd container: non-root, config at /etc/patterd/patter.yaml, listening on 0.0.0.0:8000.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY patterd ./patterd
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/patterd --create-home patterd \
    && mkdir -p /etc/patterd
COPY --from=build /wheels /wheels
# the end-of-turn model's ONNX file: the pipecat-ai wheel alone (patterd never imports it)
RUN pip install --no-cache-dir /wheels/*.whl \
    && pip install --no-cache-dir --no-deps 'pipecat-ai>=1.14,<2' && rm -rf /wheels
COPY config/patter.yaml /etc/patterd/patter.yaml
ENV PATTERD_CONFIG=/etc/patterd/patter.yaml \
    PATTERD_HOST=0.0.0.0 \
    PATTERD_PORT=8000 \
    PATTERD_STORE_URL=sqlite:////var/lib/patterd/patterd.db \
    PYTHONUNBUFFERED=1
USER patterd
WORKDIR /var/lib/patterd
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PATTERD_PORT','8000'), timeout=2).status == 200 else 1)"]
ENTRYPOINT ["patterd"]
CMD ["--config", "/etc/patterd/patter.yaml"]
