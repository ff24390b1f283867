#!/usr/bin/env bash
# Builds the single-node cluster's components from their Go modules, at the versions the
# go.mod files beside this script pin, into $CLUSTER_DIR/bin (git-ignored). A component
# whose go.mod and go.sum have not changed since its last build is not built again.
#
#   tools/cluster/build.sh [component ...]     # default: all of them
#
# Components (one Go module each, so their dependency graphs never have to agree):
#   kubernetes  kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
#   etcd        etcd (the server)
#   coredns     coredns
#   kuberay     the KubeRay operator (ray-operator)
#   ingress     the Traefik ingress controller (ingress-controller)
#   netpol      kube-router, run as the NetworkPolicy controller only (the bridge CNI
#               plugin enforces no policy)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

# component -> "package[:output-name] ..." (output name defaults to the package's last element)
declare -A PACKAGES=(
  [kubernetes]="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy"
  [etcd]="go.etcd.io/etcd/server/v3:etcd"
  [coredns]="github.com/coredns/coredns"
  [kuberay]="github.com/ray-project/kuberay/ray-operator:kuberay-operator"
  [ingress]="github.com/traefik/traefik/v3/cmd/traefik:ingress-controller"
  [netpol]="github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
)
ALL=(kubernetes etcd coredns kuberay ingress netpol)

# Version stamps the release builds set with -X, so `kubectl version`, Helm's kubeVersion
# checks and the node report the real version instead of v0.0.0-master.
ldflags_for() {
  local component=$1 v
  case $component in
    kubernetes)
      v=$(module_version "$here/kubernetes/go.mod" k8s.io/kubernetes)
      local major=${v#v}; major=${major%%.*}
      local minor=${v#v*.}; minor=${minor%%.*}
      local x
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
      done
      echo "$x" ;;
    coredns)
      echo "-X github.com/coredns/coredns/coremain.GitCommit=$(module_version "$here/coredns/go.mod" github.com/coredns/coredns)" ;;
    ingress)
      v=$(module_version "$here/ingress/go.mod" github.com/traefik/traefik/v3)
      echo "-X github.com/traefik/traefik/v3/pkg/version.Version=$v -X github.com/traefik/traefik/v3/pkg/version.BuildDate=1970-01-01T00:00:00Z" ;;
  esac
}

# The kubelet and friends run on the host (cgo as the release builds allow); the rest run
# in images of their one static binary.
cgo_for() { [[ $1 == kubernetes ]] && echo 1 || echo 0; }

build_component() {
  local component=$1 module="$here/$1"
  local stamp="$CLUSTER_DIR/bin/.$component.stamp"
  local want; want=$(cat "$module/go.mod" "$module/go.sum" | sha256sum | cut -c1-16)
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "$component: up to date"; return
  fi
  local start=$SECONDS spec pkg out
  for spec in ${PACKAGES[$component]}; do
    pkg=${spec%%:*}; out=${spec#*:}; [[ $out == "$spec" ]] && out=${pkg##*/}
    echo "$component: building $out"
    (cd "$module" && CGO_ENABLED=$(cgo_for "$component") go build -trimpath -ldflags "-s -w $(ldflags_for "$component")" \
      -o "$CLUSTER_DIR/bin/$out" "$pkg")
  done
  echo "$want" > "$stamp"
  echo "$component: built in $((SECONDS - start)) s"
}

mkdir -p "$CLUSTER_DIR/bin"
for component in "${@:-${ALL[@]}}"; do
  [[ -n ${PACKAGES[$component]:-} ]] || die "unknown component $component (one of: ${ALL[*]})"
  build_component "$component"
done
