# Shared by the cluster scripts: where the cluster lives, its fixed addresses and helpers.
# CLUSTER_DIR (git-ignored) holds build outputs (bin/), images/, certificates, configs, data,
# logs and pid files. `make cluster-down` keeps bin/, images/ and the runtime's image store so
# that the next `make cluster` builds and imports nothing.
CLUSTER_DIR=${CLUSTER_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.cluster}
CLUSTER_TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CLUSTER_TOOLS/../.." && pwd)
export CLUSTER_DIR

NODE_NAME=finserve-node
POD_CIDR=10.244.0.0/24
POD_BRIDGE=finserve0
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
API_PORT=6443
# the runtime the kubelet uses: Debian's containerd on a socket of its own, so that a
# Docker daemon's containerd (if any) is never touched
CONTAINERD_SOCK=/run/finserve-containerd/containerd.sock
KUBECONFIG_FILE=$CLUSTER_DIR/kubeconfig
# images built here; the tags say what they hold
PAUSE_IMAGE=localhost/finserve-pause:1
DOCKER=/usr/bin/docker   # Debian's client (/usr/local/bin/docker lacks the legacy builder)

die() { echo "cluster: $*" >&2; exit 1; }
say() { echo "cluster: $*"; }

# module_version GO_MOD MODULE: the version a go.mod requires of MODULE.
module_version() {
  awk -v m="$2" '($1 == m && $2 ~ /^v/) { print $2; exit }
                 ($1 == "require" && $2 == m) { print $3; exit }' "$1"
}

# node_ip: the address the API server advertises and the kubelet reports (this machine's
# own address on its default route; traffic to it never leaves the machine).
node_ip() {
  ip -4 route get 1.1.1.1 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "src") { print $(i + 1); exit } }'
}

ctr_k8s() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# start_daemon NAME COMMAND...: run in the background, log to logs/NAME.log, pid in run/NAME.pid.
start_daemon() {
  local name=$1; shift
  mkdir -p "$CLUSTER_DIR/run" "$CLUSTER_DIR/logs"
  if [[ -f $CLUSTER_DIR/run/$name.pid ]] && kill -0 "$(cat "$CLUSTER_DIR/run/$name.pid")" 2>/dev/null; then
    say "$name already running (pid $(cat "$CLUSTER_DIR/run/$name.pid"))"; return
  fi
  setsid "$@" >>"$CLUSTER_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$CLUSTER_DIR/run/$name.pid"
  say "started $name (pid $!)"
}

# stop_daemon NAME: TERM the process whose pid we recorded, KILL after 15 s.
stop_daemon() {
  local file=$CLUSTER_DIR/run/$1.pid pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { say "$1 did not stop, killing"; kill -KILL "$pid" || true; }
    say "stopped $1 (pid $pid)"
  fi
  rm -f "$file"
}

# wait_for DESCRIPTION SECONDS COMMAND...: poll every second until COMMAND succeeds.
wait_for() {
  local what=$1 seconds=$2; shift 2
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - start < seconds )) || die "$what: not ready after $seconds s (logs in $CLUSTER_DIR/logs)"
    sleep 1
  done
  say "$what ready after $((SECONDS - start)) s"
}
