# Trellis — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
LAB_NAME ?= demo
NODES ?= 3

# Bin dir of the Go-built tools (kube-apiserver, etcd, helm, cnitool, CNI plugins).
export TRELLIS_TOOLS_BIN := $(shell tools/bootstrap.sh --print-dir)
export PATH := $(TRELLIS_TOOLS_BIN):$(PATH)
# Root-only tests are #[ignore]d ("needs root"); run them when we are root.
ROOT_TEST_FLAGS := $(if $(filter 0,$(shell id -u)),--include-ignored,)

.PHONY: all build tools test test-kernel conformance static image lint manifests unit-test bench demo demo-imitation demo-clusters demo-down clean

all: build

build:
	$(CARGO) build --workspace --all-targets

## tools: Debian packages and the pinned Go-built tools (cached; seconds when warm)
tools:
	@tools/bootstrap.sh >/dev/null

## lint: formatting and clippy, warnings are errors
lint: tools
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	helm lint --strict charts/trellis

## manifests: render manifests/trellis.yaml from the chart (a test fails when it is stale)
manifests: tools
	tools/render-manifests.sh > manifests/trellis.yaml

## unit-test: tests that need no root and no network
unit-test:
	$(CARGO) test --workspace

## test: everything CI runs (the kernel tier too, as root)
test: tools lint static
	@if [ "$$(id -u)" != 0 ]; then echo "NOTE: not root: root-only tests are skipped (shown as ignored)"; fi
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace -- $(ROOT_TEST_FLAGS)
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory test-kernel; \
	else echo "NOTE: not root: the kernel tier (make test-kernel) is SKIPPED"; fi
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory conformance; \
	else echo "NOTE: not root: the upstream conformance focus (make conformance) is SKIPPED"; fi

## conformance: the upstream Kubernetes e2e suite (e2e.test v1.34.4) against Trellis installed
## with helm on a lab cluster of real nodes (root): every [sig-network] conformance and dual-stack
## spec on containerd 2, then 9 of them on Debian's containerd 1.6; FOCUS=regexp SKIP=regexp
## choose the specs
conformance: tools
	$(CARGO) build --workspace --bins
	tools/conformance/run.sh
	RUNTIME=containerd1.6 SUITE=small tools/conformance/run.sh

## static: the image's binaries built for musl (as `make image` does), checked to be static
static:
	tools/static-build.sh

## image: the Trellis image, built without a container engine: an OCI image archive that
## `ctr -n k8s.io images import` takes (tools/image/build.sh pause|busybox|all builds the others)
image:
	tools/image/build.sh trellis
	@out="$${TRELLIS_IMAGE_OUT:-target/images}"; echo "The image: $$out/trellis.oci.tar (rootfs in $$out/trellis-rootfs/)"; \
		echo "  import it: ctr -n k8s.io images import $$out/trellis.oci.tar"

## test-kernel: the kernel WireGuard dataplane in a booted Debian kernel under qemu (root;
## installs qemu, the kernel package and virtme-ng the first time). FILTER=name selects trials.
test-kernel: tools
	tools/kernel/run-tests.sh $(FILTER)

## bench: benchmarks that print figures and ratios and record them in BENCHMARKS.md (root)
bench: tools static
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p trellis-cni --bench cni_latency
	$(CARGO) bench -p trellis-e2e --bench device
	$(CARGO) bench -p trellis-e2e --bench mesh
	$(CARGO) bench -p trellis-e2e --bench clusters
	$(CARGO) bench -p trellis-e2e --bench paths
	$(CARGO) bench -p trellis-e2e --bench pod_startup

## demo: a lab cluster of real nodes (containerd, kubelet, kube-proxy, CoreDNS), Trellis
## installed with helm, a Deployment spread over the nodes: pods -o wide, pod-to-pod and
## Service requests across nodes, the mesh's peers with handshakes
demo: tools
	$(CARGO) build --workspace --bins
	LAB_NAME=$(LAB_NAME) NODES=$(NODES) tools/demo.sh

## demo-imitation: the same mesh on the lab's imitation nodes (no kubelet; seconds): nodes,
## a ping matrix of 2 pods per node, every peer's handshake
demo-imitation: tools
	$(CARGO) build --workspace --bins
	@target/debug/trellis-lab down --name $(LAB_NAME) >/dev/null 2>&1 || true
	target/debug/trellis-lab up --name $(LAB_NAME) --nodes $(NODES)
	@echo
	kubectl --kubeconfig "$$(target/debug/trellis-lab kubeconfig --name $(LAB_NAME))" get nodes \
		-o custom-columns='NODE:.metadata.name,INTERNAL-IP:.status.addresses[0].address,POD-CIDRS:.spec.podCIDRs'
	@echo
	target/debug/trellis-lab mesh --name $(LAB_NAME) --pods 2
	@echo
	@echo "The lab keeps running. Try: target/debug/trellis-lab show --name $(LAB_NAME)"
	@echo "  or: target/debug/trellis-lab exec --name $(LAB_NAME) $(LAB_NAME)-n1 -- wg show"
	@echo "Tear it down with: make demo-down"

## demo-clusters: two lab clusters (2 + 3 nodes, four of them behind NAT routers, two of those a site) linked
## with `kubectl trellis cluster link`: a ping matrix of all pods, and which paths are direct
## which on a site's LAN and which relayed
demo-clusters: tools
	$(CARGO) build --workspace --bins
	tools/demo-clusters.sh

## demo-down: removes the labs of both demos
demo-down:
	$(CARGO) build -p trellis-e2e --bin trellis-lab
	target/debug/trellis-lab down --name $(LAB_NAME)
	target/debug/trellis-lab down --name west

clean:
	$(CARGO) clean
