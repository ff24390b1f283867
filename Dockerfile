# syntax=docker/dockerfile:1
# FinServe serving image: Ray 2.60 (Python 3.11) + TensorFlow + the finserve package
# (serving/, deployments/), running as the Ray image's non-root `ray` user (uid 1000, gid 100).
# The KubeRay operator starts Ray in it (`ray start`); the chart's serveConfigV2 imports
# deployments.app:build_app from the installed package.
#
#   CPU:  docker build -t <registry>/finserve:0.1.0 .
#   GPU:  docker build --build-arg VARIANT=gpu -t <registry>/finserve:0.1.0-gpu .
#         (rayproject/ray:2.60.0-py311-gpu base, CUDA libraries from tensorflow[and-cuda])
#
# Models: a model_store/ folder in the build context is baked in at
# /home/ray/finserve/model_store, which the chart serves with modelStore.type=image (the
# default). Without one the image holds an empty store, and the chart points store_uri at
# S3 (modelStore.type=s3) or a PersistentVolumeClaim (modelStore.type=pvc): build_app then
# reads the versions from there when the Serve application starts.

ARG RAY_VERSION=2.60.0
ARG VARIANT=cpu

FROM rayproject/ray:${RAY_VERSION}-py311 AS base-cpu
FROM rayproject/ray:${RAY_VERSION}-py311-gpu AS base-gpu

FROM base-${VARIANT}
ARG VARIANT
# TensorFlow pin (pyproject.toml); the GPU variant installs its [and-cuda] extra.
ARG TENSORFLOW="tensorflow>=2.21,<2.22"
# fsspec's S3 filesystem for modelStore.type=s3.
ARG EXTRA_PACKAGES="s3fs>=2024.6"

ENV FINSERVE_HOME=/home/ray/finserve \
    FINSERVE_STORE=/home/ray/finserve/model_store \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 1000:100
WORKDIR /home/ray/finserve

# .dockerignore lets in only pyproject.toml, README.md, serving/, deployments/, model_store/.
COPY --chown=1000:100 . .

RUN set -eu; \
    if [ "$VARIANT" = gpu ]; then tf="tensorflow[and-cuda]${TENSORFLOW#tensorflow}"; \
    else tf="$TENSORFLOW"; fi; \
    pip install --no-cache-dir . "$tf" $EXTRA_PACKAGES; \
    rm -rf build ./*.egg-info; \
    mkdir -p model_store; \
    python -c "import ray, tensorflow, deployments.app, serving.store; \
print('finserve image: ray', ray.__version__, 'tensorflow', tensorflow.__version__)"

# Serve HTTP, dashboard, GCS, Ray client, metrics (KubeRay names and wires these ports).
EXPOSE 8000 8265 6379 10001 8080
