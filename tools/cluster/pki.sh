#!/usr/bin/env bash
# Certificates and kubeconfigs for the single-node cluster, made here with openssl:
# one CA, the API server's serving certificate (for the node address, the `kubernetes`
# Service and loopback), a client certificate per component (the kubelet as
# system:node:<name> so the Node authorizer applies), the service-account key pair.
# Made anew when the node address changes.   tools/cluster/pki.sh NODE_IP
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ip=$1
pki=$CLUSTER_DIR/pki
if [[ -f $pki/ip && $(cat "$pki/ip") == "$ip" ]]; then exit 0; fi
rm -rf "$pki" && mkdir -p "$pki" && cd "$pki"
umask 077

openssl req -x509 -newkey rsa:2048 -nodes -days 365 -keyout ca.key -out ca.crt \
  -subj "/CN=finserve-cluster-ca" 2>/dev/null
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null

# cert NAME SUBJECT [SUBJECT_ALT_NAMES]: a key and a certificate signed by the CA
cert() {
  local name=$1 subject=$2 sans=${3:-} ext=$pki/$1.ext
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subject" 2>/dev/null
  { echo "basicConstraints=CA:FALSE"
    echo "keyUsage=digitalSignature,keyEncipherment"
    if [[ -n $sans ]]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$sans"
    else echo "extendedKeyUsage=clientAuth"; fi; } > "$ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
    -extfile "$ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$ext"
}

cert apiserver "/CN=kube-apiserver" \
  "IP:$ip,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN"
cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "IP:$ip,DNS:$NODE_NAME"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert admin "/O=system:masters/CN=finserve-admin"
cert kube-controller-manager "/CN=system:kube-controller-manager"
cert kube-scheduler "/CN=system:kube-scheduler"
cert kube-proxy "/CN=system:kube-proxy"

# kubeconfig FILE CERT_NAME
kubeconfig() {
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: finserve
    cluster: {server: "https://$ip:$API_PORT", certificate-authority-data: $(base64 -w0 ca.crt)}
users:
  - name: $2
    user: {client-certificate-data: $(base64 -w0 "$2.crt"), client-key-data: $(base64 -w0 "$2.key")}
contexts:
  - name: finserve
    context: {cluster: finserve, user: $2}
current-context: finserve
EOF
}
kubeconfig "$KUBECONFIG_FILE" admin
for component in kubelet kube-controller-manager kube-scheduler kube-proxy; do
  kubeconfig "$CLUSTER_DIR/$component.kubeconfig" "$component"
done
echo "$ip" > ip
echo "cluster: certificates made for $ip"
