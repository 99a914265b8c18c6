# Monitor: aggregates zeroproof.stats from every worker, fires alerts, exports Prometheus metrics.
# CPU-only torch (the package depends on torch; the monitor itself never runs a model).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.2"
COPY pyproject.toml README.md ./
COPY zeroproof ./zeroproof
COPY service ./service
COPY workers ./workers
COPY monitoring ./monitoring
RUN pip install .

RUN useradd --create-home --uid 10001 zeroproof
USER zeroproof
EXPOSE 9109
ENV ZEROPROOF_METRICS_PORT=9109
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9109/metrics', timeout=2)" || exit 1
ENTRYPOINT ["zeroproof-monitor"]
