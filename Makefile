# Every target sets up what it needs first (scripts/setup.sh is fast when nothing changed).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test step-times test-faults test-fast test-k8s lint crds bench bench-cloud bench-operator control-plane node chart-tools toxiproxy fake-gcs-server image image-local image-lock clean

# make test records each step's time here (scripts/timed.sh) and prints them with the tiers' times.
STEP_TIMES := $(CURDIR)/build/step-times.tsv
test: export ICECHUNK_OPERATOR_STEP_TIMES := $(STEP_TIMES)

setup:
	@scripts/timed.sh "setup (Python 3.14, virtual environment)" scripts/setup.sh

demo: setup
	$(VENV)/bin/icechunk-operator demo --dir demo-output

lint: setup
	@scripts/timed.sh "lint and types (ruff, mypy, import contracts)" sh -c '\
		$(VENV)/bin/ruff check operator tests && \
		$(VENV)/bin/ruff format --check operator tests && \
		$(VENV)/bin/mypy && \
		$(VENV)/bin/lint-imports'

# Lint, then every tier, with the builds the later tiers need running beside lint and the first
# tiers (scripts/test.sh); ends with the time per step and tier, and the 25 slowest tests.
test: step-times
	@scripts/test.sh

step-times:
	@mkdir -p $(dir $(STEP_TIMES)) && : >$(STEP_TIMES)

# The fault matrix alone: kills at each stage, storage and control-plane faults, hostile input,
# secret canaries (make test runs it too).
test-faults: setup control-plane chart-tools toxiproxy fake-gcs-server
	$(PY) -m pytest -q -m faults

# The unit tier: no server, no control plane, no Dask cluster (tests/tiers.py refuses a unit test
# that asks for one).
test-fast: setup
	$(PY) -m pytest -q -m unit

# The end-to-end tests on the local control plane (built and cached on first use): the fast tier
# (a fake kubelet runs commit pods as processes) and the real-pod tier (a real node runs the image).
test-k8s: setup control-plane chart-tools node image-local
	$(PY) -m pytest -q -m "k8s or pods"

crds: setup
	$(VENV)/bin/icechunk-operator crds --output crds
	$(VENV)/bin/icechunk-operator crds --output charts/icechunk-operator/crds

# etcd, kube-apiserver, kube-controller-manager, kubectl and kwok, built from Go modules.
control-plane:
	@scripts/timed.sh "build: control plane" scripts/build-control-plane.sh >/dev/null

# kubelet, kube-proxy, kube-scheduler and CoreDNS (Go modules), containerd, runc and the CNI plugins
# (Debian's packages): a real node for the real-pod tier.
node:
	@scripts/timed.sh "build: node" scripts/build-node.sh >/dev/null

# toxiproxy (built from its Go module), for latency and network faults in front of the S3 server.
toxiproxy:
	@scripts/timed.sh "build: toxiproxy" scripts/build-go-tool.sh toxiproxy >/dev/null

# fake-gcs-server (built from its Go module), the GCS emulator the gs:// tests run against.
fake-gcs-server:
	@scripts/timed.sh "build: fake-gcs-server" scripts/build-go-tool.sh fake-gcs-server >/dev/null

# helm (built from its Go module) and checkov (its own virtual environment), for the chart tests.
chart-tools: setup
	@scripts/timed.sh "build: helm and checkov" scripts/build-chart-tools.sh >/dev/null

bench: setup
	$(PY) -m tests.bench.ingest
	$(PY) -m tests.bench.reconcile
	$(PY) -m tests.bench.gnss

# The ingest on an S3 server behind toxiproxy at 0, 20 and 50 ms per response, beside the seed's
# algorithm (files/s, stage seconds, requests per file, commit time, peak memory).
bench-cloud: setup toxiproxy
	@scripts/build-go-tool.sh versitygw >/dev/null
	$(PY) -m tests.bench.cloud

# The operator at 1,000 IngestBatches on the local control plane: apply-to-Job latency, memory;
# then 200 batches over 20 stores run to the end (drain time, peak RSS, writers per store).
bench-operator: setup control-plane
	$(PY) -m tests.bench.operator
	ICECHUNK_OPERATOR_LOAD=20x10 $(PY) -m pytest -q -s --no-header tests/e2e/test_load.py

# The image of operator, commit pods and Dask pods, where a container engine exists.
IMAGE ?= icechunk-operator:0.1.0
image:
	@engine=$$(command -v docker || command -v podman) || { echo "make image: no docker or podman here (make image-local builds it without one)"; exit 1; }; \
	$$engine build -f worker_image/Dockerfile -t $(IMAGE) .

# The same image without a container engine or a registry (root, mmdebstrap, gcc): OCI layout
# tarballs for `ctr -n k8s.io images import`, cached; prints the pause image's tarball, then the
# image's (scripts/build-image.sh says how each layer is made).
image-local:
	@scripts/timed.sh "build: image (OCI layout)" scripts/build-image.sh

# Keep the image's lock within the development lock after changing dependencies. The image holds
# the dask-operator extra: the chart runs the Dask operator's controller from it.
image-lock: setup
	UV_CACHE_DIR=$${ICECHUNK_OPERATOR_CACHE:-$$HOME/.cache/icechunk-operator}/uv $(VENV)/bin/uv pip compile pyproject.toml \
		--extra dask-operator --python-version 3.14 -c requirements-dev.lock -o worker_image/requirements.lock --no-header -q

clean:
	rm -rf demo-output .pytest_cache .mypy_cache .ruff_cache
