#!/usr/bin/env bash
# Builds every image the cluster runs, here (no registry can be reached), and imports them into
# the kubelet's containerd (namespace k8s.io):
#   localhost/finserve-pause:1          the pod sandbox (images/pause.c, static)
#   localhost/coredns:<version>         CoreDNS from .cluster/bin
#   localhost/kuberay-operator:<version> the KubeRay operator from .cluster/bin
#   localhost/traefik:<version>         the ingress controller from .cluster/bin
#   finserve:<tag>                       the project's Dockerfile on a Python 3.11 base made
#                                        from Debian's packages (images/base.Dockerfile)
#
#   tools/cluster/images.sh [--finserve-tag TAG]   (default: the chart's appVersion)
# An image already in containerd is not built again; FINSERVE_REBUILD=1 rebuilds finserve.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

finserve_tag=$(awk '/^appVersion:/ { gsub(/"/, "", $2); print $2 }' "$REPO_ROOT/charts/finserve/Chart.yaml")
[[ ${1:-} == --finserve-tag ]] && finserve_tag=$2
ROOTFS_IMAGE=finserve-rootfs:bookworm
BASE_IMAGE=finserve-base:py311

# have_image NAME: containerd holds NAME (short names as the kubelet normalizes them)
have_image() {
  local name=$1
  [[ $name == */* ]] || name=docker.io/library/$name
  ctr_k8s images ls -q | grep -qx "$name"
}
have_docker_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# Docker builds the images; it runs without a bridge or iptables rules of its own, and the
# builds use the host's network (pip reaches PyPI as the host does).
start_docker() {
  "$DOCKER" info >/dev/null 2>&1 && return
  start_daemon dockerd dockerd --iptables=false --ip-forward=false --bridge=none \
    --pidfile "$CLUSTER_DIR/run/dockerd.real.pid" --host unix:///var/run/docker.sock
  wait_for dockerd 60 "$DOCKER" info
}

# import IMAGE: docker image -> the kubelet's containerd
import() {
  say "importing $1 into the kubelet's containerd"
  "$DOCKER" save "$1" | ctr_k8s images import - >/dev/null
}

# build_scratch IMAGE BINARY PATH: a one-file image of a static binary at PATH
build_scratch() {
  local image=$1 binary=$2 path=$3 ctx
  have_image "$image" && { say "$image present"; return; }
  ctx=$(mktemp -d)
  cp "$binary" "$ctx/binary"
  printf 'FROM scratch\nCOPY binary %s\nUSER 65532:65532\nENTRYPOINT ["%s"]\n' "$path" "$path" \
    > "$ctx/Dockerfile"
  "$DOCKER" build -q -t "$image" "$ctx" >/dev/null
  rm -rf "$ctx"
  import "$image"
}

build_pause() {
  have_image "$PAUSE_IMAGE" && { say "$PAUSE_IMAGE present"; return; }
  local ctx; ctx=$(mktemp -d)
  gcc -static -Os -s -o "$ctx/pause" "$CLUSTER_TOOLS/images/pause.c"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' > "$ctx/Dockerfile"
  "$DOCKER" build -q -t "$PAUSE_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"
  import "$PAUSE_IMAGE"
}

# The base: debootstrap (minbase, Python 3.11 and what Ray and KubeRay's probes call) from the
# Debian mirror apt uses here, imported as a root filesystem, then images/base.Dockerfile.
build_base() {
  have_docker_image "$BASE_IMAGE" && return
  if ! have_docker_image "$ROOTFS_IMAGE"; then
    local rootfs=$CLUSTER_DIR/rootfs mirror
    mirror=$(awk '/^URIs:/ { print $2; exit } /^deb / { print $2; exit }' \
      /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null | head -1)
    say "debootstrap bookworm from $mirror (about a minute)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,wget,procps \
      bookworm "$rootfs" "$mirror" > "$CLUSTER_DIR/logs/debootstrap.log"
    tar -C "$rootfs" -c . | "$DOCKER" import - "$ROOTFS_IMAGE" >/dev/null
    rm -rf "$rootfs"
  fi
  local ctx; ctx=$(mktemp -d)
  mkdir "$ctx/ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  "$DOCKER" build -q --network host --build-arg ROOTFS="$ROOTFS_IMAGE" -t "$BASE_IMAGE" \
    -f "$CLUSTER_TOOLS/images/base.Dockerfile" "$ctx" >/dev/null
  rm -rf "$ctx"
}

# source_digest: what the FinServe image is built from (the files .dockerignore lets in, and
# the Dockerfile), so that a changed package is rebuilt and an unchanged one is not
source_digest() {
  (cd "$REPO_ROOT" && git ls-files -co --exclude-standard -- Dockerfile .dockerignore \
     pyproject.toml README.md serving deployments rollout | LC_ALL=C sort | xargs sha256sum) \
    | sha256sum | cut -c1-16
}

build_finserve() {
  local image=finserve:$finserve_tag digest stamp
  digest=$(source_digest)
  stamp=$CLUSTER_DIR/images/finserve-$finserve_tag.source
  if have_image "$image" && [[ -z ${FINSERVE_REBUILD:-} && -f $stamp && $(cat "$stamp") == "$digest" ]]; then
    say "$image present (built from these sources)"; return
  fi
  build_base
  say "building $image from the Dockerfile on $BASE_IMAGE (pip install, train the defaults)"
  local start=$SECONDS
  DOCKER_BUILDKIT=0 "$DOCKER" build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
    -t "$image" "$REPO_ROOT" > "$CLUSTER_DIR/logs/image-finserve.log" 2>&1 \
    || die "image build failed: $CLUSTER_DIR/logs/image-finserve.log"
  say "built $image in $((SECONDS - start)) s"
  import "$image"
  mkdir -p "$(dirname "$stamp")" && echo "$digest" > "$stamp"
  "$DOCKER" image prune -f >/dev/null  # the layers the rebuild left dangling
}

mkdir -p "$CLUSTER_DIR/logs"
command -v debootstrap >/dev/null || die "debootstrap missing (make cluster installs it)"
start_docker
build_pause
build_scratch "localhost/coredns:$(module_version "$CLUSTER_TOOLS/coredns/go.mod" github.com/coredns/coredns)" "$CLUSTER_DIR/bin/coredns" /coredns
build_scratch "localhost/kuberay-operator:$(module_version "$CLUSTER_TOOLS/kuberay/go.mod" github.com/ray-project/kuberay/ray-operator)" "$CLUSTER_DIR/bin/kuberay-operator" /manager  # the path its Deployment runs
build_scratch "localhost/traefik:$(module_version "$CLUSTER_TOOLS/ingress/go.mod" github.com/traefik/traefik/v3)" "$CLUSTER_DIR/bin/ingress-controller" /traefik
build_finserve
