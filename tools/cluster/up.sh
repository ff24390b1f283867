#!/usr/bin/env bash
# `make cluster`: a real single-node Kubernetes cluster on this machine, built from source.
#
# Builds (tools/cluster/build.sh) and starts etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, a kubelet on Debian's containerd, kube-proxy (iptables mode), and as pods
# CoreDNS, the KubeRay operator and Traefik (the default IngressClass), with certificates
# made here. Writes
# .cluster/kubeconfig, installs the operator's own CRDs, advertises one `nvidia.com/gpu` on
# the node (an extended resource: GPU pods schedule, no CUDA exists here) and returns when the
# node is Ready, DNS answers and the operator runs. No image is pulled: all are built here.
# Pod traffic stays on this machine (forwarding off the pod bridge is dropped; DNS answers
# only the cluster's names). `make cluster-down` undoes all of it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[[ $(id -u) == 0 ]] || die "needs root (containerd, the kubelet, iptables)"
start_all=$SECONDS

install_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v ipset >/dev/null || missing+=(ipset)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v dig >/dev/null || missing+=(dnsutils)
  command -v gcc >/dev/null || missing+=(gcc libc6-dev)
  (( ${#missing[@]} )) || return 0
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Kernel settings the cluster changes, saved once so that cluster-down puts them back.
save_sysctls() {
  local saved=$CLUSTER_DIR/run/sysctl.saved key
  [[ -f $saved ]] && return
  for key in kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.ip_forward \
             net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables \
             kernel.keys.root_maxkeys kernel.keys.root_maxbytes; do
    echo "$key=$(sysctl -n "$key")"
  done > "$saved"
}

# Pods may talk to each other (subject to NetworkPolicy, which the filter table enforces) and
# to this machine, never beyond it. The rule lives in the mangle table's FORWARD chain, which
# runs before the filter table's, where kube-proxy and the policy controller insert (and keep
# re-inserting) rules of their own at the top, some of which accept.
network() {
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  iptables -t mangle -N FINSERVE-FWD 2>/dev/null || iptables -t mangle -F FINSERVE-FWD
  iptables -t mangle -A FINSERVE-FWD -i "$POD_BRIDGE" -o "$POD_BRIDGE" -j RETURN
  iptables -t mangle -A FINSERVE-FWD -i "$POD_BRIDGE" -j DROP
  iptables -t mangle -A FINSERVE-FWD -o "$POD_BRIDGE" -j DROP
  iptables -t mangle -C FORWARD -j FINSERVE-FWD 2>/dev/null \
    || iptables -t mangle -I FORWARD 1 -j FINSERVE-FWD
  mkdir -p "$CLUSTER_DIR/cni"
  cat > "$CLUSTER_DIR/cni/10-finserve.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "finserve", "plugins": [
  {"type": "bridge", "bridge": "$POD_BRIDGE", "isGateway": true, "ipMasq": false,
   "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$CLUSTER_DIR/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
}

start_containerd() {
  mkdir -p "$CLUSTER_DIR/containerd" "$(dirname "$CONTAINERD_SOCK")"
  cat > "$CLUSTER_DIR/containerd/config.toml" <<EOF
version = 2
root = "$CLUSTER_DIR/containerd/root"
state = "$(dirname "$CONTAINERD_SOCK")/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # no process here may lower oom_score_adj (no CAP_SYS_RESOURCE): ../shared/CLUSTER.md
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CLUSTER_DIR/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
  start_daemon containerd containerd --config "$CLUSTER_DIR/containerd/config.toml"
  wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version
}

start_control_plane() {
  local ip=$1 pki=$CLUSTER_DIR/pki bin=$CLUSTER_DIR/bin
  start_daemon etcd "$bin/etcd" --name finserve --data-dir "$CLUSTER_DIR/data/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster finserve=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
  wait_for etcd 60 curl -sf http://127.0.0.1:2381/health
  start_daemon kube-apiserver "$bin/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --advertise-address "$ip" --bind-address "$ip" --secure-port "$API_PORT" \
    --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --client-ca-file "$pki/ca.crt" --tls-cert-file "$pki/apiserver.crt" \
    --tls-private-key-file "$pki/apiserver.key" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key"
  wait_for kube-apiserver 120 kctl get --raw /readyz
  start_daemon kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$CLUSTER_DIR/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$CLUSTER_DIR/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$CLUSTER_DIR/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --service-cluster-ip-range "$SERVICE_CIDR" --root-ca-file "$pki/ca.crt" \
    --service-account-private-key-file "$pki/sa.key" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key"
  start_daemon kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$CLUSTER_DIR/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$CLUSTER_DIR/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$CLUSTER_DIR/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false
}

start_node() {
  local ip=$1 pki=$CLUSTER_DIR/pki
  mkdir -p "$CLUSTER_DIR/kubelet"
  cat > "$CLUSTER_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
# no systemd here, and cgroup v1, which kubelet 1.35 refuses unless told (../shared/CLUSTER.md)
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: /etc/resolv.conf
serializeImagePulls: false
maxPods: 110
# Every image here was built here and none can be pulled again: image garbage collection is
# off (100 %), and eviction waits for a nearly full disk. The disk is shared with whatever
# else the machine holds, so percentage thresholds (10-15 % of a large disk) fired while
# gigabytes were still free, and the kubelet deleted the CoreDNS and operator images.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 200Mi
  nodefs.available: 2Gi
  imagefs.available: 2Gi
  nodefs.inodesFree: 5%
EOF
  start_daemon kubelet "$CLUSTER_DIR/bin/kubelet" --config "$CLUSTER_DIR/kubelet.yaml" \
    --kubeconfig "$CLUSTER_DIR/kubelet.kubeconfig" --hostname-override "$NODE_NAME" \
    --node-ip "$ip" --root-dir "$CLUSTER_DIR/kubelet"
  start_daemon kube-proxy "$CLUSTER_DIR/bin/kube-proxy" \
    --kubeconfig "$CLUSTER_DIR/kube-proxy.kubeconfig" --proxy-mode iptables \
    --hostname-override "$NODE_NAME" --cluster-cidr "$POD_CIDR" \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
    --conntrack-tcp-timeout-close-wait 0 --metrics-bind-address 127.0.0.1:10249
  wait_for "node $NODE_NAME" 120 node_ready
  # NetworkPolicy: kube-router's policy controller alone (no routing, no service proxy, no
  # CNI of its own), which filters pod traffic in FORWARD/INPUT/OUTPUT chains of its own
  start_daemon netpol "$CLUSTER_DIR/bin/kube-router" --kubeconfig "$KUBECONFIG_FILE" \
    --hostname-override "$NODE_NAME" --run-firewall=true --run-router=false \
    --run-service-proxy=false --enable-cni=false --enable-pod-egress=false \
    --service-cluster-ip-range "$SERVICE_CIDR" --health-port 20244
  wait_for "NetworkPolicy controller" 60 curl -sf http://127.0.0.1:20244/healthz
}

kctl() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
node_ready() {
  [[ $(kctl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

# One nvidia.com/gpu on the node (an extended resource in the node's status, as the NVIDIA
# device plugin would report) and the label NVIDIA's feature discovery sets, so that the
# chart's GPU worker group schedules here. It proves scheduling and autoscaling, not CUDA.
advertise_gpu() {
  kctl label node "$NODE_NAME" nvidia.com/gpu.present=true --overwrite >/dev/null
  kctl patch node "$NODE_NAME" --subresource status --type json \
    -p '[{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "1"}]' >/dev/null
  wait_for "nvidia.com/gpu allocatable on the node" 60 node_has_gpu
}

node_has_gpu() {
  [[ $(kctl get node "$NODE_NAME" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}') == 1 ]]
}

dns_answers() {
  kctl -n kube-system wait deploy/coredns --for condition=Available --timeout 1s &&
    [[ -n $(dig +short +time=1 +tries=1 @"$DNS_SERVICE_IP" "kubernetes.default.svc.$CLUSTER_DOMAIN" 2>/dev/null) ]]
}

start_addons() {
  local coredns_version kuberay_version
  coredns_version=$(module_version "$CLUSTER_TOOLS/coredns/go.mod" github.com/coredns/coredns)
  kuberay_version=$(module_version "$CLUSTER_TOOLS/kuberay/go.mod" github.com/ray-project/kuberay/ray-operator)
  sed -e "s|@COREDNS_IMAGE@|localhost/coredns:$coredns_version|" \
      -e "s|@DNS_SERVICE_IP@|$DNS_SERVICE_IP|" -e "s|@CLUSTER_DOMAIN@|$CLUSTER_DOMAIN|" \
      "$CLUSTER_TOOLS/manifests/coredns.yaml" | kctl apply -f - >/dev/null
  # the operator's own CRDs, RBAC and Deployment (its kustomize config, from the module
  # that was built), with the image built here
  local kustomize=$CLUSTER_DIR/kuberay-kustomize
  mkdir -p "$kustomize"
  cat > "$kustomize/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: kuberay-system
resources:
  - $(realpath --relative-to "$kustomize" "$(cd "$CLUSTER_TOOLS/kuberay" && go list -m -f '{{.Dir}}' github.com/ray-project/kuberay/ray-operator)/config/default")
images:
  - {name: quay.io/kuberay/operator, newName: localhost/kuberay-operator, newTag: $kuberay_version}
patches:
  - target: {kind: Deployment, name: kuberay-operator}
    patch: |
      - {op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: Never}
EOF
  kctl create namespace kuberay-system --dry-run=client -o yaml | kctl apply -f - >/dev/null
  kctl apply --server-side --force-conflicts -k "$kustomize" >/dev/null
  sed -e "s|@TRAEFIK_IMAGE@|localhost/traefik:$(module_version "$CLUSTER_TOOLS/ingress/go.mod" github.com/traefik/traefik/v3)|" \
      "$CLUSTER_TOOLS/manifests/traefik.yaml" | kctl apply -f - >/dev/null
  wait_for "CoreDNS answering" 120 dns_answers
  wait_for "KubeRay operator $kuberay_version" 180 \
    kctl -n kuberay-system wait deploy/kuberay-operator --for condition=Available --timeout 1s
  wait_for "Traefik ingress controller" 120 \
    kctl -n traefik wait deploy/traefik --for condition=Available --timeout 1s
}

mkdir -p "$CLUSTER_DIR/run" "$CLUSTER_DIR/logs"
install_packages
KUBECTL=${KUBECTL:-$REPO_ROOT/.venv/bin/kubectl}   # `make tools` puts it there
[[ -x $KUBECTL ]] || die "no kubectl at $KUBECTL: run make tools"
"$CLUSTER_TOOLS/build.sh"
ip=$(node_ip)
[[ -n $ip ]] || die "no address on a default route to advertise"
save_sysctls
network
start_containerd
"$CLUSTER_TOOLS/images.sh"
"$CLUSTER_TOOLS/pki.sh" "$ip"
start_control_plane "$ip"
start_node "$ip"
advertise_gpu
start_addons
say "cluster up in $((SECONDS - start_all)) s: export KUBECONFIG=$KUBECONFIG_FILE"
free -m | awk 'NR == 2 { print "cluster: memory in use on the machine: " $3 " MiB" }'
