{{/*
Chart name, cut to 63 characters (DNS label).
*/}}
{{- define "finserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name, cut to 63 characters; the release name alone when it already holds
the chart name.
*/}}
{{- define "finserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
RayService name: KubeRay allows 47 characters, so that "<cluster>-serve-svc" stays a valid
Service name.
*/}}
{{- define "finserve.rayServiceName" -}}
{{- include "finserve.fullname" . | trunc 47 | trimSuffix "-" }}
{{- end }}

{{/*
The Serve Service KubeRay creates for the RayService (port 8000, and the gRPC port).
*/}}
{{- define "finserve.serveServiceName" -}}
{{- printf "%s-serve-svc" (include "finserve.rayServiceName" .) }}
{{- end }}

{{/*
Chart label value.
*/}}
{{- define "finserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels of the chart's top-level objects: the stable labels plus the chart and app
versions.
*/}}
{{- define "finserve.labels" -}}
helm.sh/chart: {{ include "finserve.chart" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
{{ include "finserve.stableLabels" . }}
{{- end }}

{{/*
Labels that do not change when the chart or the app version does: the selector labels, the
manager, the suite and commonLabels. The Ray pod templates carry only these: KubeRay hashes
the whole rayClusterConfig (pod template labels included) and brings up a new RayCluster when
the hash changes, so a version label there would replace the Ray cluster on every chart bump.
*/}}
{{- define "finserve.stableLabels" -}}
{{ include "finserve.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "finserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of every Ray pod template (head and workers); NetworkPolicy, PDBs and the PodMonitor
select on them. Stable labels only (see finserve.stableLabels): no chart or app version. And
no app.kubernetes.io/name: KubeRay sets it to "kuberay" on every Ray pod and selects on that
value in the RayService's own `<name>-head-svc` (HeadServiceLabels in its common/service.go);
a pod template that overrides it leaves that Service without endpoints.
*/}}
{{- define "finserve.rayPodLabels" -}}
{{ include "finserve.raySelectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector of this release's Ray pods (both RayClusters during a blue/green switch). */}}
{{- define "finserve.raySelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: finserve
app.kubernetes.io/component: ray
{{- end }}

{{/*
Images.
*/}}
{{- define "finserve.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "finserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "finserve.imageTag" .) }}
{{- end }}

{{- define "finserve.gpuImage" -}}
{{- $repo := default .Values.image.repository .Values.gpuWorker.image.repository }}
{{- $tag := default (printf "%s-gpu" (include "finserve.imageTag" .)) .Values.gpuWorker.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/*
ServiceAccount used by the Ray pods ("" leaves it to KubeRay and the namespace default).
*/}}
{{- define "finserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "finserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
API keys Secret name and the mounted file.
*/}}
{{- define "finserve.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "finserve.fullname" .)) .Values.apiKeys.existingSecret }}
{{- end }}

{{- define "finserve.apiKeysFile" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.apiKeys.mountPath) .Values.apiKeys.secretKey }}
{{- end }}

{{/*
The inferences the helm test sends with its key, as JSON [{model, body}]: every model the
chart has a sample request for. The generated helm-test key may call exactly these models.
*/}}
{{- define "finserve.testInferences" -}}
{{- $out := list }}
{{- range $model := .Values.serve.app.models }}
{{- $body := include "finserve.sampleRequest" (dict "ctx" $ "model" $model) }}
{{- if $body }}
{{- $out = append $out (dict "model" $model.name "body" $body) }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
"true" when the chart writes the key file and adds a generated helm-test key to it: with
apiKeys.testKey.enabled, no apiKeys.existingSecret and at least one model to infer.
*/}}
{{- define "finserve.generatesTestKey" -}}
{{- if and .Values.apiKeys.testKey.enabled (not .Values.apiKeys.existingSecret) (include "finserve.testInferences" . | fromJsonArray) }}true{{ end }}
{{- end }}

{{/*
The Secret a chart-generated value lives in, from the cluster (`lookup`), or {} on a first
install. lookup has no cluster in `helm template`, `helm upgrade --dry-run=client`, helm diff
or Argo CD: there an install renders a new random value every time (the documented
production path gives existing Secrets instead), and an upgrade fails here rather than
replace the value the running release uses. Arguments: (list $ name what fix).
*/}}
{{- define "finserve.keptSecret" -}}
{{- $ctx := index . 0 }}
{{- $name := index . 1 }}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace $name }}
{{- if and $ctx.Release.IsUpgrade (not $existing) }}
{{- fail (printf "cannot read the Secret %s in namespace %s, which keeps %s: this upgrade is rendered without the cluster (helm template --is-upgrade, helm upgrade --dry-run=client, helm diff, Argo CD), where lookup finds nothing, or the Secret was deleted. A new random value would replace the one the release uses. Render against the cluster (helm upgrade, or --dry-run=server), or manage it yourself: %s (docs/kubernetes.md, section 3)." $name $ctx.Release.Namespace (index . 2) (index . 3)) }}
{{- end }}
{{- toJson $existing }}
{{- end }}

{{/*
Plaintext of the generated helm-test key (fsk_helm-test_<secret>): kept from the installed
Secret, else generated once per render (memoized, so the key file and the plaintext agree).
*/}}
{{- define "finserve.testKey" -}}
{{- if not (hasKey .Values.apiKeys "_generatedTestKey") }}
{{- $fix := "create the key file Secret and a helm-test key Secret and set apiKeys.existingSecret and apiKeys.testKey.existingSecret, or set apiKeys.testKey.enabled=false for this upgrade (the next one adds a new key)" }}
{{- $existing := include "finserve.keptSecret" (list . (include "finserve.apiKeysSecretName" .) "the generated helm-test key" $fix) | fromJson }}
{{- $key := (dig "data" "test-api-key" "" $existing) | b64dec }}
{{- $_ := set .Values.apiKeys "_testKeyGenerated" (not $key) }}
{{- if not $key }}
{{- $key = printf "fsk_helm-test_%s" (randAlphaNum 43) }}
{{- end }}
{{- $_ := set .Values.apiKeys "_generatedTestKey" $key }}
{{- end }}
{{- .Values.apiKeys._generatedTestKey }}
{{- end }}

{{/*
Where the helm test pod finds a plaintext key: {name, key}, or empty when there is none.
*/}}
{{- define "finserve.testKeyRef" -}}
{{- if .Values.apiKeys.existingSecret }}
{{- with .Values.apiKeys.testKey.existingSecret }}
{{- toYaml (dict "name" . "key" "api-key") }}
{{- end }}
{{- else if include "finserve.generatesTestKey" . }}
{{- toYaml (dict "name" (include "finserve.apiKeysSecretName" .) "key" "test-api-key") }}
{{- end }}
{{- end }}

{{/*
What this render generated rather than read back from the cluster ("" when nothing): the
helm-test key and the audit token key. NOTES.txt names them.
*/}}
{{- define "finserve.generatedSecrets" -}}
{{- $new := list }}
{{- if include "finserve.generatesTestKey" . }}
{{- $_ := include "finserve.testKey" . }}
{{- if .Values.apiKeys._testKeyGenerated }}{{ $new = append $new "the helm-test key" }}{{ end }}
{{- end }}
{{- $audit := lookup "v1" "Secret" .Release.Namespace (printf "%s-audit" (include "finserve.fullname" .)) }}
{{- if and (not .Values.audit.tokenKeySecret) (not (dig "data" "token-key" "" $audit)) }}
{{- $new = append $new "the audit token key" }}
{{- end }}
{{- if and (not .Values.audit.trailKeySecret) (not (dig "data" "trail-key" "" $audit)) }}
{{- $new = append $new "the audit trail key" }}
{{- end }}
{{- join " and " $new }}
{{- end }}

{{/* Name of the Secret holding the audit token key (given, or the chart's). */}}
{{- define "finserve.auditSecretName" -}}
{{- default (printf "%s-audit" (include "finserve.fullname" .)) .Values.audit.tokenKeySecret }}
{{- end }}

{{/* Name of the Secret holding the trail key (given, or the chart's). */}}
{{- define "finserve.trailKeySecretName" -}}
{{- default (printf "%s-audit" (include "finserve.fullname" .)) .Values.audit.trailKeySecret }}
{{- end }}

{{/* Decision trail claim name. */}}
{{- define "finserve.auditClaimName" -}}
{{- default (printf "%s-audit" (include "finserve.fullname" .)) .Values.audit.pvc.existingClaim }}
{{- end }}

{{/*
serve.app.audit.location, from audit.type: a folder on the claim, the database URL the
replicas read from the environment (never the URL itself: the Serve config is not secret),
or stdout.
*/}}
{{- define "finserve.auditLocation" -}}
{{- if eq .Values.audit.type "pvc" }}
{{- printf "%s/trail" .Values.audit.pvc.mountPath }}
{{- else if eq .Values.audit.type "postgresql" }}
{{- "env:FINSERVE_AUDIT_URL" }}
{{- else }}
{{- "stdout" }}
{{- end }}
{{- end }}

{{/*
Model store PVC name.
*/}}
{{- define "finserve.storeClaimName" -}}
{{- default (printf "%s-model-store" (include "finserve.fullname" .)) .Values.modelStore.pvc.existingClaim }}
{{- end }}

{{/*
store_uri of the Serve application, from modelStore.
*/}}
{{- define "finserve.storeUri" -}}
{{- $store := .Values.modelStore }}
{{- if eq $store.type "s3" }}
{{- $store.s3.uri }}
{{- else if eq $store.type "pvc" }}
{{- $store.pvc.mountPath }}
{{- else }}
{{- $store.image.path }}
{{- end }}
{{- end }}

{{/*
Cross-field rules and the KubeRay CRD check; each failure says how to fix the values.
*/}}
{{- define "finserve.validate" -}}
{{- if not (or .Values.kuberay.skipCRDCheck (.Capabilities.APIVersions.Has "ray.io/v1/RayService")) }}
{{- fail (printf "the KubeRay CRDs are missing: this cluster does not serve ray.io/v1 RayService. Install the KubeRay operator (%s) first:\n  helm repo add kuberay https://ray-project.github.io/kuberay-helm/\n  helm install kuberay-operator kuberay/kuberay-operator --version %s\n(to render without a cluster, pass --api-versions ray.io/v1/RayService or --set kuberay.skipCRDCheck=true)" (index .Chart.Annotations "finserve.io/requires") (index .Chart.Annotations "finserve.io/kuberay-min-version")) }}
{{- end }}
{{- if and .Values.rayAuth.enabled (semverCompare "<2.52.0-0" .Values.rayVersion) }}
{{- fail (printf "rayAuth.enabled needs Ray 2.52.0 or newer (KubeRay refuses authOptions.mode token below it), but rayVersion is %s: use an image with a newer Ray and set rayVersion to it." .Values.rayVersion) }}
{{- end }}
{{- if and .Values.metrics.podMonitor.enabled .Values.networkPolicy.enabled (not .Values.networkPolicy.metricsPeers) }}
{{- fail "metrics.podMonitor.enabled is true but networkPolicy.metricsPeers is empty: the NetworkPolicy would block Prometheus from the metrics ports. List the peers Prometheus scrapes from, e.g. --set networkPolicy.metricsPeers[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring (the namespace Prometheus runs in), or set networkPolicy.enabled=false." }}
{{- end }}
{{- if not (regexMatch "^[a-z]" (include "finserve.rayServiceName" .)) }}
{{- fail (printf "the RayService name %q must start with a letter (KubeRay requires a DNS-1035 label): set fullnameOverride, e.g. fullnameOverride=finserve." (include "finserve.rayServiceName" .)) }}
{{- end }}
{{- if and .Values.serve.gpu.enabled (not .Values.gpuWorker.enabled) }}
{{- fail "serve.gpu.enabled is true but gpuWorker.enabled is false: Model replicas would ask for GPUs no worker has. Set gpuWorker.enabled=true (see ci/gpu-values.yaml) or serve.gpu.enabled=false." }}
{{- end }}
{{- range .Values.serve.app.models }}
{{- if and (not $.Values.gpuWorker.enabled) .model .model.num_gpus }}
{{- fail (printf "serve.app.models[%s].model.num_gpus is %v but gpuWorker.enabled is false: set gpuWorker.enabled=true or remove num_gpus." .name .model.num_gpus) }}
{{- end }}
{{- end }}
{{- range .Values.serve.app.models }}
{{- if and (hasKey . "versions") (not .versions) }}
{{- fail (printf "serve.app.models[%s].versions is empty: list at least one version (the first answers requests that name none), e.g. [\"latest\"], or remove the key." .name) }}
{{- end }}
{{- if ne (len (default (list) .versions)) (len (uniq (default (list) .versions))) }}
{{- fail (printf "serve.app.models[%s].versions %v lists a version twice: list each once." .name .versions) }}
{{- end }}
{{- $name := .name }}
{{- with .traffic }}
{{- $total := 0 }}
{{- range $version, $weight := . }}
{{- if lt (int $weight) 0 }}
{{- fail (printf "serve.app.models[%s].traffic[%s] is %v: weights must be 0 or more." $name $version $weight) }}
{{- end }}
{{- $total = add $total $weight }}
{{- end }}
{{- if ne (int $total) 100 }}
{{- fail (printf "serve.app.models[%s].traffic weights add up to %v, not 100: e.g. {\"1\": 90, \"2\": 10}." $name $total) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (eq .Values.modelStore.type "s3") (not (hasPrefix "s3://" .Values.modelStore.s3.uri)) }}
{{- fail (printf "modelStore.type is s3 but modelStore.s3.uri is %q: set it to the store root, e.g. s3://bank-models/finserve." .Values.modelStore.s3.uri) }}
{{- end }}
{{- if and .Values.apiKeys.existingSecret .Values.apiKeys.keys }}
{{- fail "apiKeys.keys and apiKeys.existingSecret are both set: keep the entries in the existing Secret's key file and remove apiKeys.keys." }}
{{- end }}
{{- if and .Values.apiKeys.testKey.enabled (not .Values.apiKeys.existingSecret) }}
{{- range .Values.apiKeys.keys }}
{{- if eq .id "helm-test" }}
{{- fail "apiKeys.keys has an entry with id helm-test, the chart's own test key: rename it or set apiKeys.testKey.enabled=false." }}
{{- end }}
{{- end }}
{{- end }}
{{- if gt (int .Values.cpuWorker.minReplicas) (int .Values.cpuWorker.maxReplicas) }}
{{- fail (printf "cpuWorker.minReplicas (%d) exceeds cpuWorker.maxReplicas (%d): raise maxReplicas or lower minReplicas." (int .Values.cpuWorker.minReplicas) (int .Values.cpuWorker.maxReplicas)) }}
{{- end }}
{{- if gt (int .Values.gpuWorker.minReplicas) (int .Values.gpuWorker.maxReplicas) }}
{{- fail (printf "gpuWorker.minReplicas (%d) exceeds gpuWorker.maxReplicas (%d): raise maxReplicas or lower minReplicas." (int .Values.gpuWorker.minReplicas) (int .Values.gpuWorker.maxReplicas)) }}
{{- end }}
{{- include "finserve.validateIngress" (list "ingress" .Values.ingress) }}
{{- include "finserve.validateIngress" (list "ingress.grpc" .Values.ingress.grpc) }}
{{- if and .Values.ingress.grpc.enabled (not .Values.serve.grpc.enabled) }}
{{- fail "ingress.grpc.enabled is true but serve.grpc.enabled is false: the gRPC Ingress would have no port to route to. Set serve.grpc.enabled=true or ingress.grpc.enabled=false." }}
{{- end }}
{{- end }}

{{/*
Cross-field rules of one Ingress's values, (list "<values path>" $values): hosts when enabled,
and every TLS host among them.
*/}}
{{- define "finserve.validateIngress" -}}
{{- $at := index . 0 }}
{{- $ing := index . 1 }}
{{- if $ing.enabled }}
{{- if not $ing.hosts }}
{{- fail (printf "%s.enabled is true but %s.hosts is empty: list at least one host, e.g. %s.hosts[0].host=finserve.example.com." $at $at $at) }}
{{- end }}
{{- $hosts := list }}
{{- range $ing.hosts }}{{ $hosts = append $hosts .host }}{{ end }}
{{- range $ing.tls }}
{{- if not .hosts }}
{{- fail (printf "%s.tls entry with secretName %q has no hosts: list the hosts its certificate covers (each one also in %s.hosts)." $at (default "" .secretName) $at) }}
{{- end }}
{{- range .hosts }}
{{- if not (has . $hosts) }}
{{- fail (printf "%s.tls host %q is not one of %s.hosts %v: add it to %s.hosts or remove it from %s.tls." $at . $at $hosts $at $at) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The Serve config (serveConfigV2): deployments/serve.yaml's application with the values' app
args, store_uri from modelStore and, with GPU serving, fractional GPUs on the Model stage.
Each model's routing (versions, traffic, shadow) is taken OUT of the args and rendered as
the `gateway` deployment's user_config (serving.config.Routing): Ray Serve hashes the
args into the application's code version, so a change there restarts every replica, while
a change to a user_config alone is applied in place by Gateway.reconfigure.
*/}}
{{- define "finserve.serveConfig" -}}
{{- $app := deepCopy .Values.serve.app }}
{{- $_ := set $app "store_uri" (include "finserve.storeUri" .) }}
{{- $audit := merge (dict "location" (include "finserve.auditLocation" .) "keys_dir" nil) (default dict $app.audit) }}
{{- $_ := set $app "audit" $audit }}
{{- $models := list }}
{{- $routing := dict }}
{{- range $app.models }}
{{- $route := dict "versions" (list "latest") }}
{{- if hasKey . "versions" }}
{{- $_ := set $route "versions" .versions }}
{{- end }}
{{- with .traffic }}
{{- $_ := set $route "traffic" . }}
{{- end }}
{{- with .shadow }}
{{- $_ := set $route "shadow" . }}
{{- end }}
{{- $_ := set $routing .name $route }}
{{- $model := omit . "versions" "traffic" "shadow" }}
{{- if $.Values.serve.gpu.enabled }}
{{- $stage := default (dict) $model.model }}
{{- if not $stage.num_gpus }}
{{- $_ := set $stage "num_gpus" $.Values.serve.gpu.modelReplicaGpus }}
{{- end }}
{{- $_ := set $model "model" $stage }}
{{- if ne (default "gateway" $model.placement) "stage-replicas" }}
{{- $_ := set $model "placement" "model-replicas" }}
{{- end }}
{{- else if and $model.model $model.model.num_gpus (eq (default "gateway" $model.placement) "gateway") }}
{{- fail (printf "serve.app.models[%s].model.num_gpus is set but its placement is gateway: a GPU model needs its own deployment; set placement: model-replicas." $model.name) }}
{{- end }}
{{- $models = append $models $model }}
{{- end }}
{{- $_ := set $app "models" $models }}
{{- $gateway := dict "name" "gateway" "user_config" (dict "models" $routing) }}
{{- $logging := dict "encoding" "JSON" "log_level" .Values.serve.logLevel "enable_access_log" true }}
{{- $application := dict "name" "finserve" "route_prefix" "/" "import_path" "deployments.app:build_app" "args" $app "deployments" (list $gateway) "logging_config" $logging }}
{{- $config := dict "proxy_location" .Values.serve.proxyLocation "http_options" (dict "host" "0.0.0.0" "port" 8000) "applications" (list $application) }}
{{- if .Values.serve.grpc.enabled }}
{{- /* deployments.deploy.grpc_options (a chart test keeps them equal) */}}
{{- $_ := set $config "grpc_options" (dict "port" .Values.serve.grpc.port "grpc_servicer_functions" (list "serving.protocol.grpc_v2.add_servicer")) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
Environment of every Ray container: API keys, model store, extra env.
*/}}
{{- define "finserve.rayEnv" -}}
{{- /* Ray reports usage to ray.io unless told not to; a bank's cluster sends nothing out */}}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: FINSERVE_REQUIRE_AUTH
  value: {{ required "apiKeys.requireAuth must stay true: FinServe on Kubernetes always requires API keys" (ternary "true" "" .Values.apiKeys.requireAuth) | quote }}
- name: FINSERVE_API_KEYS_FILE
  value: {{ include "finserve.apiKeysFile" . | quote }}
- name: FINSERVE_STORE
  value: {{ include "finserve.storeUri" . | quote }}
- name: {{ dig "audit" "token_key_env" "FINSERVE_TOKEN_KEY" .Values.serve.app }}
  valueFrom:
    secretKeyRef:
      name: {{ include "finserve.auditSecretName" . }}
      key: token-key
- name: {{ dig "audit" "trail_key_env" "FINSERVE_TRAIL_KEY" .Values.serve.app }}
  valueFrom:
    secretKeyRef:
      name: {{ include "finserve.trailKeySecretName" . }}
      key: trail-key
{{- if eq .Values.audit.type "postgresql" }}
- name: FINSERVE_AUDIT_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "audit.postgresql.urlSecret: the Secret holding the database URL" .Values.audit.postgresql.urlSecret }}
      key: {{ .Values.audit.postgresql.urlKey }}
{{- end }}
{{- if eq .Values.modelStore.type "s3" }}
{{- with .Values.modelStore.s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.modelStore.s3.credentialsSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.modelStore.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.modelStore.s3.secretAccessKeyKey }}
- name: AWS_ENDPOINT_URL
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.modelStore.s3.endpointUrlKey }}
      optional: true
{{- end }}
{{- end }}
{{- if .Values.serve.haproxy }}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: "1"
- name: RAY_SERVE_HAPROXY_METRICS_ENABLED
  value: {{ ternary "1" "0" .Values.serve.haproxyRequestMetrics | quote }}
- name: RAY_SERVE_HAPROXY_METRICS_PORT
  value: {{ include "finserve.haproxyMetricsPort" . | quote }}
- name: RAY_SERVE_HAPROXY_NBTHREAD
  value: {{ .Values.serve.haproxyThreads | int | quote }}
{{- /* slow clients: Ray's knob for `timeout client`, the launcher for the rest */}}
- name: RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S
  value: {{ .Values.serve.ingressTimeouts.clientS | int | quote }}
- name: FINSERVE_INGRESS_KEEP_ALIVE_TIMEOUT_S
  value: {{ .Values.serve.ingressTimeouts.keepAliveS | int | quote }}
- name: RAY_SERVE_HAPROXY_BINARY_PATH
  value: {{ include "finserve.haproxyLauncher" . | quote }}
{{- end }}
{{- /* HAProxy's `timeout http-request` and the gateway's deadline for a body */}}
- name: FINSERVE_INGRESS_REQUEST_TIMEOUT_S
  value: {{ .Values.serve.ingressTimeouts.requestS | int | quote }}
{{- if .Values.serve.throughputOptimized }}
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: "1"
{{- end }}
- name: RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE
  value: {{ .Values.serve.requestLogBuffer | int | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Volumes of every Ray pod and their mounts in the Ray container. No /dev/shm: KubeRay adds a
memory-backed emptyDir there sized to the Ray container's memory limit when the container
mounts nothing at /dev/shm (and rayStartParams set no plasma-directory), and Ray's default
object store (30 % of the memory) then fits in it.
*/}}
{{- define "finserve.rayVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
- name: api-keys
  secret:
    secretName: {{ include "finserve.apiKeysSecretName" . }}
    defaultMode: 0440
    # only the key file (hashes); never the helm-test plaintext
    items:
      - key: {{ .Values.apiKeys.secretKey }}
        path: {{ .Values.apiKeys.secretKey }}
{{- if .Values.serve.haproxy }}
- name: haproxy-launcher
  configMap:
    name: {{ include "finserve.haproxyConfigMapName" . }}
    defaultMode: 0555
{{- end }}
{{- if eq .Values.audit.type "pvc" }}
- name: audit
  persistentVolumeClaim:
    claimName: {{ include "finserve.auditClaimName" . }}
{{- end }}
{{- if eq .Values.modelStore.type "pvc" }}
- name: model-store
  persistentVolumeClaim:
    # read-only per mount (the Ray container), so the head's seed init container may write
    claimName: {{ include "finserve.storeClaimName" . }}
{{- end }}
{{- end }}

{{- define "finserve.rayVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- /* the whole folder, never a subPath: a Secret update then reaches the pod (kubelet
swaps the folder's ..data link) and the gateway re-reads the key file (serving.security.KeyFile) */}}
- name: api-keys
  mountPath: {{ .Values.apiKeys.mountPath }}
  readOnly: true
{{- if .Values.serve.haproxy }}
- name: haproxy-launcher
  mountPath: {{ include "finserve.haproxyLauncher" . | dir }}
  readOnly: true
{{- end }}
{{- if eq .Values.audit.type "pvc" }}
- name: audit
  mountPath: {{ .Values.audit.pvc.mountPath }}
{{- end }}
{{- if eq .Values.modelStore.type "pvc" }}
- name: model-store
  mountPath: {{ .Values.modelStore.pvc.mountPath }}
  readOnly: {{ .Values.modelStore.pvc.readOnly }}
{{- end }}
{{- end }}

{{/*
Pod spec fields shared by the head and worker templates.
*/}}
{{- define "finserve.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
volumes:
  {{- include "finserve.rayVolumes" . | nindent 2 }}
{{- end }}

{{/*
"true" when the head seeds the model store claim: modelStore.type pvc, a claim the chart
creates, and modelStore.pvc.seedFromImage.
*/}}
{{- define "finserve.seedsStore" -}}
{{- if and (eq .Values.modelStore.type "pvc") (not .Values.modelStore.pvc.existingClaim) .Values.modelStore.pvc.seedFromImage }}true{{ end }}
{{- end }}

{{/*
The head's init container that seeds a chart-made claim from the image's baked store: every
model the claim lacks is copied into a hidden folder, then renamed into place (the store
ignores hidden folders, so a copy cut short is never read); a model the claim has is never
touched, so versions published into the claim stay as they are. It runs before Ray starts on
the head, so before any worker (they wait for the head's GCS) loads a model.
*/}}
{{- define "finserve.seedContainer" -}}
- name: seed-model-store
  image: {{ include "finserve.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: [/bin/sh, -ec]
  args:
    - |
      src={{ .Values.modelStore.image.path }}; dst={{ .Values.modelStore.pvc.mountPath }}
      for model in "$src"/*/; do
        [ -d "$model" ] || continue
        name=$(basename "$model")
        case $name in .*) continue ;; esac
        if [ -e "$dst/$name" ]; then echo "model store: $name is in the claim, kept"; continue; fi
        rm -rf "$dst/.seed-$name"
        cp -R "$model" "$dst/.seed-$name"
        mv "$dst/.seed-$name" "$dst/$name"
        echo "model store: seeded $name from the image"
      done
  resources:
    {{- toYaml .Values.head.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: model-store
      mountPath: {{ .Values.modelStore.pvc.mountPath }}
{{- end }}

{{/*
A sample V2 inference request body for a model's task ("" when the chart knows none), given
(dict "ctx" $ "model" $model): the task's request example, from files/sample_requests.json
(written by make generate).
*/}}
{{- define "finserve.sampleRequest" -}}
{{- $samples := .ctx.Files.Get "files/sample_requests.json" | fromJson }}
{{- index $samples (default .model.name .model.task) | default "" }}
{{- end }}

{{/*
The HAProxy launcher Ray runs in place of HAProxy (RAY_SERVE_HAPROXY_BINARY_PATH): it adds the
slow-client limits Ray's config template has no setting for, then execs HAProxy
(deployments/deploy.py; a chart test keeps this script equal to haproxy_launcher_script).
*/}}
{{- define "finserve.haproxyLauncher" -}}/etc/finserve/haproxy/haproxy{{- end }}

{{- define "finserve.haproxyConfigMapName" -}}
{{- printf "%s-haproxy" (include "finserve.fullname" .) }}
{{- end }}

{{/* Port of HAProxy's own Prometheus exporter (the ingress: requests, responses by code). */}}
{{- define "finserve.haproxyMetricsPort" -}}9101{{- end }}

{{/* Ports every Ray container serves: Serve HTTP, Ray's metrics, HAProxy's exporter (with
the protocol the API server defaults, as KubeRay writes them back: rayservice.yaml). */}}
{{- define "finserve.servePorts" -}}
- {name: serve, containerPort: 8000, protocol: TCP}
{{- if .Values.serve.grpc.enabled }}
{{- /* named serve-*: KubeRay's <name>-serve-svc carries it beside `serve` */}}
- {name: serve-grpc, containerPort: {{ .Values.serve.grpc.port }}, protocol: TCP}
{{- end }}
- {name: metrics, containerPort: 8080, protocol: TCP}
{{- if .Values.serve.haproxy }}
- {name: haproxy-metrics, containerPort: {{ include "finserve.haproxyMetricsPort" . }}, protocol: TCP}
{{- end }}
{{- end }}

{{/*
An Ingress in front of the Serve Service KubeRay creates (it follows the active RayCluster),
given (dict "ctx" $ "values" <ingress values> "name" <name> "port" <Service port>): the HTTP
one (ingress) and the gRPC one (ingress.grpc).
*/}}
{{- define "finserve.ingress" -}}
{{- $root := .ctx }}
{{- $values := .values }}
{{- $port := .port }}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ .name }}
  labels:
    {{- include "finserve.labels" $root | nindent 4 }}
  {{- with $values.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $values.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- with $values.tls }}
  tls:
    {{- range . }}
    - hosts:
        {{- range .hosts }}
        - {{ . | quote }}
        {{- end }}
      {{- with .secretName }}
      secretName: {{ . }}
      {{- end }}
    {{- end }}
  {{- end }}
  rules:
    {{- range $values.hosts }}
    - host: {{ .host | quote }}
      http:
        paths:
          {{- range .paths }}
          - path: {{ .path }}
            pathType: {{ .pathType }}
            backend:
              service:
                name: {{ include "finserve.serveServiceName" $root }}
                port:
                  number: {{ $port }}
          {{- end }}
    {{- end }}
{{- end }}
