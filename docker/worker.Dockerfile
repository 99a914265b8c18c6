# Streaming inference worker. GPU-capable: the default base image ships CUDA torch; run with
# `--gpus all` (compose: the `gpu` profile) and the worker puts the model on the GPU, else it uses the CPU.
# For a small CPU-only image: --build-arg BASE_IMAGE=python:3.11-slim --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Reuse freed heap memory instead of fresh mmap pages for large tensors (bench/decode.py: ~2-3x faster decode
# of 1e7-element batches); see README "Speed".
ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295
WORKDIR /app

# torch first (kept from the base image when it already has one), then the project without touching torch.
RUN python -c "import torch" 2>/dev/null || pip install ${TORCH_INDEX:+--index-url $TORCH_INDEX} "torch>=2.2"
COPY pyproject.toml README.md ./
COPY zeroproof ./zeroproof
COPY service ./service
COPY workers ./workers
COPY monitoring ./monitoring
RUN pip install ".[fast]"

RUN useradd --create-home --uid 10001 zeroproof && mkdir -p /models && chown zeroproof /models
USER zeroproof
EXPOSE 9108
ENV ZEROPROOF_METRICS_PORT=9108
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9108/metrics', timeout=2)" || exit 1
ENTRYPOINT ["zeroproof-worker"]
