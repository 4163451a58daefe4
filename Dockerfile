# nasprune service image: CPU torch, the API + worker CLI. Build: docker build -t nasprune .
# Run both roles with docker-compose.yml, or one container: docker run -p 8000:8000 nasprune
# BASE: the Python image to build on (a local base where Docker Hub cannot be reached); EXTRAS: the optional
# dependencies, e.g. `--build-arg EXTRAS=onnx,postgres,ray,web` for the Ray executor (docker-compose.ray.yml).
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG EXTRAS=onnx,postgres,web

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TOKENIZERS_PARALLELISM=false \
    NASPRUNE_DATA_ROOT=/data \
    NASPRUNE_HOST=0.0.0.0 \
    NASPRUNE_PORT=8000

WORKDIR /app
# CPU-only torch first (the default wheel pulls CUDA); the package's range admits it, so pip keeps it. A base image
# that has it already (docker/python-base.Dockerfile) passes TORCH="torch==2.13.0".
ARG TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
RUN pip install ${TORCH}
COPY pyproject.toml README.md ./
COPY supernet ./supernet
COPY search ./search
COPY service ./service
COPY migrations ./migrations
RUN pip install ".[${EXTRAS}]"

RUN useradd --create-home --uid 1000 nasprune && mkdir -p /data && chown nasprune /data
USER nasprune
VOLUME ["/data"]
EXPOSE 8000
# db upgrade, NASPRUNE_WORKERS worker processes (default 1) and the API on 0.0.0.0:8000
CMD ["nasprune", "serve"]
