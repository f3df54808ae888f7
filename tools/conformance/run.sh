#!/usr/bin/env bash
# The upstream Kubernetes e2e suite judging Trellis (`make conformance`): a
# lab cluster of real nodes (containerd, kubelet, kube-proxy; see the
# README's "Real nodes"), Trellis installed with helm from the image built
# here, then e2e.test v1.34.4 with a focus, and the suite's own summary.
#
#   tools/conformance/run.sh                 the focus below
#   FOCUS='regexp' SKIP='regexp' tools/conformance/run.sh
#   NODES=3 KEEP=1 ...                       (KEEP=1 leaves the lab up)
set -euo pipefail
cd "$(dirname "$0")/../.."
log() { echo "[conformance] $*" >&2; }
: "${TRELLIS_TOOLS_BIN:?run through make conformance (it sets TRELLIS_TOOLS_BIN)}"
lab=${LAB:-conform}
nodes=${NODES:-2}
# The pod network's own conformance specs, which need nothing but pods,
# a scheduler and the network: pod to pod over HTTP and UDP, node to pod.
focus=${FOCUS:-'\[sig-network\] Networking Granular Checks: Pods .*\[Conformance\]'}
# SCTP needs a kernel with SCTP, which these machines lack.
skip=${SKIP:-'SCTP|\[Serial\]|\[Disruptive\]|\[Flaky\]'}
trellis_lab=target/debug/trellis-lab
e2e=$TRELLIS_TOOLS_BIN/e2e.test

[[ -x $trellis_lab ]] || { log "build first: cargo build --workspace --bins"; exit 1; }
[[ -x $e2e ]] || { log "no $e2e: tools/bootstrap.sh builds it"; exit 1; }
log "images: trellis, agnhost (tools/image/build.sh)"
tools/image/build.sh trellis agnhost >/dev/null
$trellis_lab down --name "$lab" >/dev/null 2>&1 || true
cleanup() { [[ ${KEEP:-0} == 1 ]] || $trellis_lab down --name "$lab" >/dev/null 2>&1 || true; }
trap cleanup EXIT
log "lab $lab: $nodes real nodes"
$trellis_lab up --name "$lab" --nodes "$nodes" --real-nodes >/dev/null
$trellis_lab import-image --name "$lab" target/images/trellis.oci.tar target/images/agnhost.oci.tar >/dev/null
kubeconfig=$($trellis_lab kubeconfig --name "$lab")
export KUBECONFIG=$kubeconfig
server=$(kubectl config view -o jsonpath='{.clusters[0].cluster.server}')
host=$(sed -E 's#https://\[?([^]]*)\]?:[0-9]+#\1#' <<<"$server")
cidrs=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(",".join(s["clusters"][0]["cluster_cidrs"]))' "/run/trellis-lab/$lab/state.json")
log "helm install trellis (image imported, apiserver $host, pod ranges $cidrs)"
helm install trellis charts/trellis -n kube-system --wait --timeout 5m \
	--set "apiServer.host=$host,apiServer.port=6443" --set image.pullPolicy=Never \
	--set "podRanges={$cidrs}" >/dev/null
kubectl wait --for=condition=Ready nodes --all --timeout=120s >/dev/null
log "e2e.test: focus '$focus', skip '$skip'"
start=$SECONDS
set +e
"$e2e" --provider=local --kubeconfig="$kubeconfig" \
	--ginkgo.focus="$focus" --ginkgo.skip="$skip" \
	--ginkgo.no-color --ginkgo.timeout=50m >"target/conformance.log" 2>&1
status=$?
set -e
grep -E '^(Ran [0-9]+ of|FAIL!|SUCCESS!|PASS|FAIL)' target/conformance.log | tail -4
grep -E '^\s*\[FAIL\]' target/conformance.log || true
log "done in $((SECONDS - start)) s (status $status; the whole log: target/conformance.log)"
exit $status
