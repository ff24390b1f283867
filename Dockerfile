# FinServe serving image: Ray 2.60 (Python 3.11) + TensorFlow + the finserve package
# (serving/, deployments/, rollout/) + the default models trained at build time, running as the
# non-root `ray` user (uid 1000, gid 100) of the Ray image. The KubeRay operator starts Ray
# in it (`ray start`); the chart's serveConfigV2 imports deployments.app:build_app.
#
#   CPU:  docker build -t <registry>/finserve:0.1.0 .
#   GPU:  docker build --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#           --build-arg VARIANT=gpu -t <registry>/finserve:0.1.0-gpu .
#         (CUDA libraries from tensorflow[and-cuda])
#   Any other base with Python 3.11, pip on PATH and a `ray` user (uid 1000, gid 100) whose
#   home is /home/ray works too: `make cluster` builds one from Debian's packages
#   (tools/cluster/image.sh), since no registry can be reached there.
#
# Models: every model deployments/serve.yaml lists is trained at build time
# (`finserve train-missing`, fixed seeds: the same data and weights on every build) into
# /home/ray/finserve/model_store, which the chart serves with modelStore.type=image (the
# default). A model_store/ folder in the build context is copied first, so versions you
# trained or imported are kept and only missing models are trained. In production keep
# models out of the image: modelStore.type=s3 or pvc (docs/kubernetes.md).

ARG BASE_IMAGE=rayproject/ray:2.60.0-py311
FROM ${BASE_IMAGE}
# cpu, or gpu for tensorflow[and-cuda]
ARG VARIANT=cpu
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
# made by the user, not by WORKDIR (which makes it root's with the legacy builder)
RUN mkdir -p /home/ray/finserve
WORKDIR /home/ray/finserve

# .dockerignore lets in only pyproject.toml, README.md, serving/, deployments/, rollout/,
# model_store/.
COPY --chown=1000:100 . .

RUN set -eu; \
    if [ "$VARIANT" = gpu ]; then tf="tensorflow[and-cuda]${TENSORFLOW#tensorflow}"; \
    else tf="$TENSORFLOW"; fi; \
    pip install --no-cache-dir . "$tf" $EXTRA_PACKAGES; \
    rm -rf build ./*.egg-info; \
    mkdir -p model_store; \
    finserve train-missing --config deployments/serve.yaml; \
    finserve models --store model_store; \
    rm -rf serving deployments rollout pyproject.toml README.md
# What runs is the installed package: it must import with no source folder beside it.
RUN python -c "import ray, tensorflow, deployments.app, serving.store, rollout.cli; \
print('finserve image: ray', ray.__version__, 'tensorflow', tensorflow.__version__, \
      'package', deployments.app.__file__)"

# Serve HTTP and gRPC, dashboard, GCS, Ray client, metrics (KubeRay names and wires these ports).
EXPOSE 8000 9000 8265 6379 10001 8080
