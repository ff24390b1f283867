#!/usr/bin/env bash
# `make cluster-down`: stops everything `make cluster` started (by the process ids it
# recorded), removes the pod bridge, the iptables rules, the pods' network namespaces and the
# kubelet's mounts, puts back the kernel settings the cluster changed, and deletes the
# cluster's state (etcd data, certificates, kubelet folder). Build outputs (.cluster/bin) and
# the runtime's image store stay, so the next `make cluster` builds and imports nothing.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
[[ $(id -u) == 0 ]] || die "needs root"

# Pods first, while the kubelet's runtime is still up: their containers are the runtime's.
stop_daemon netpol
stop_daemon kube-proxy
stop_daemon kubelet
if ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; then
  for task in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s KILL "$task" >/dev/null 2>&1; done
  sleep 1
  for task in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$task" >/dev/null 2>&1; done
  for c in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$c" >/dev/null 2>&1; done
fi
for name in kube-scheduler kube-controller-manager kube-apiserver etcd containerd dockerd; do
  stop_daemon "$name"
done
# runc shims outlive containerd by design; any left belong to our runtime's state folder
pkill -f "containerd-shim.*$(dirname "$CONTAINERD_SOCK")" 2>/dev/null && say "stopped leftover shims"

# mounts below the cluster's folders (kubelet volumes, sandbox /dev/shm, rootfs overlays)
grep -E " ($CLUSTER_DIR|$(dirname "$CONTAINERD_SOCK")|/run/netns/cni-)" /proc/self/mounts \
  | awk '{ print $2 }' | sort -r | while read -r m; do umount -l "$m" && echo "cluster: unmounted $m"; done
for ns in /run/netns/cni-*; do [[ -e $ns ]] && { ip netns delete "$(basename "$ns")" 2>/dev/null || rm -f "$ns"; }; done

# network: our forward chain, the bridge, and what kube-proxy wrote (its KUBE-* chains)
iptables -t mangle -D FORWARD -j FINSERVE-FWD 2>/dev/null
iptables -t mangle -F FINSERVE-FWD 2>/dev/null; iptables -t mangle -X FINSERVE-FWD 2>/dev/null
if [[ -x $CLUSTER_DIR/bin/kube-proxy ]]; then
  "$CLUSTER_DIR/bin/kube-proxy" --cleanup --proxy-mode iptables >/dev/null 2>&1 && say "kube-proxy's rules removed"
fi
# what is left of the kubelet's (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT)
# and the port-map plugin's (CNI-*) chains, IPv4 and IPv6: rules jumping to them, then them
remove_chains() {  # remove_chains COMMAND PREFIX
  local cmd=$1 prefix=$2 table
  for table in filter nat mangle; do
    "$cmd" -t "$table" -S 2>/dev/null | awk -v p="$prefix" '$1 == "-A" && $0 ~ p { $1 = "-D"; print }' \
      | while read -r rule; do eval "$cmd -t $table $rule" 2>/dev/null; done
    "$cmd" -t "$table" -S 2>/dev/null | awk -v p="^$prefix" '$1 == "-N" && $2 ~ p { print $2 }' \
      | while read -r chain; do "$cmd" -t "$table" -F "$chain" 2>/dev/null
                                "$cmd" -t "$table" -X "$chain" 2>/dev/null; done
  done
}
for cmd in iptables ip6tables; do
  remove_chains "$cmd" KUBE-  # kube-router's are KUBE-ROUTER-*, KUBE-NWPLCY-*, KUBE-POD-FW-*
  remove_chains "$cmd" CNI-
done
# the policy controller's ipsets (once no rule uses them)
if command -v ipset >/dev/null; then
  ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router)' | while read -r set; do
    ipset destroy "$set" 2>/dev/null; done
fi
ip link show "$POD_BRIDGE" >/dev/null 2>&1 && ip link delete "$POD_BRIDGE" && say "removed bridge $POD_BRIDGE"

# kernel settings back as they were before the first `make cluster`
if [[ -f $CLUSTER_DIR/run/sysctl.saved ]]; then
  while IFS= read -r kv; do sysctl -qw "$kv"; done < "$CLUSTER_DIR/run/sysctl.saved"
  say "kernel settings restored: $(tr '\n' ' ' < "$CLUSTER_DIR/run/sysctl.saved")"
fi

rm -rf "$CLUSTER_DIR/run" "$CLUSTER_DIR/data" "$CLUSTER_DIR/pki" "$CLUSTER_DIR/kubelet" \
  "$CLUSTER_DIR/cni" "$CLUSTER_DIR"/*.kubeconfig "$CLUSTER_DIR/kubeconfig" \
  "$CLUSTER_DIR/kuberay-kustomize" "$(dirname "$CONTAINERD_SOCK")"
say "down"
