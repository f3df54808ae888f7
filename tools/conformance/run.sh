#!/usr/bin/env bash
# The upstream Kubernetes e2e suite judging Trellis (`make conformance`): a
# lab cluster of real nodes (containerd, kubelet, kube-proxy; see the
# README's "Real nodes"), Trellis installed with helm from the image built
# here, CoreDNS behind kube-dns, then e2e.test v1.34.4 with a focus, run by
# the ginkgo CLI in PROCS parallel processes, and the suite's own summary.
#
#   tools/conformance/run.sh                 the focus below
#   SUITE=small tools/conformance/run.sh     9 representative specs
#   FOCUS='regexp' SKIP='regexp' tools/conformance/run.sh
#   RUNTIME=containerd1.6 ...                the nodes' runtime (containerd2)
#   NODES=3 PROCS=2 KEEP=1 ...               (KEEP=1 leaves the lab up)
set -euo pipefail
cd "$(dirname "$0")/../.."
log() { echo "[conformance] $*" >&2; }
: "${TRELLIS_TOOLS_BIN:?run through make conformance (it sets TRELLIS_TOOLS_BIN)}"
lab=${LAB:-conform}
nodes=${NODES:-2}
procs=${PROCS:-4}
runtime=${RUNTIME:-containerd2}
# SUITE=full (the default): every [sig-network] conformance spec (45 at
# v1.34.4): pod to pod and node to pod over HTTP and UDP, Services
# (ClusterIP, NodePort, session affinity, ExternalName), DNS, HostPort,
# EndpointSlices, the API server's proxy. And, on the lab's dual-stack
# clusters, the dual-stack specs (22): pods and nodes with both families,
# Services of either family or both, and the Granular Checks over the
# secondary family.
# SUITE=small: 9 of them, for the second runtime: the four Granular Checks
# of pods (pod to pod, node to pod; HTTP, UDP), a Service's endpoints, DNS
# for Services, HostPort, a pod with both families, a Service over the
# secondary family.
case ${SUITE:-full} in
full) suite_focus='\[sig-network\].*\[Conformance\]|\[sig-network\] \[Feature:IPv6DualStack\]' ;;
small) suite_focus='\[sig-network\] Networking Granular Checks: Pods .*\[Conformance\]|\[sig-network\] DNS should provide DNS for services .*\[Conformance\]|\[sig-network\] Services should serve a basic endpoint from pods .*\[Conformance\]|\[sig-network\] HostPort .*\[Conformance\]|\[sig-network\] \[Feature:IPv6DualStack\] should create pod, add ipv6 and ipv4 ip to pod ips|\[sig-network\] \[Feature:IPv6DualStack\] Granular Checks: Services Secondary IP Family .*should function for pod-Service: http' ;;
*) log "SUITE is full or small, not '$SUITE'"; exit 1 ;;
esac
focus=${FOCUS:-$suite_focus}
# SCTP needs a kernel with SCTP, which these machines lack; Serial and
# Disruptive specs would take down nodes others share (none is in the focus).
skip=${SKIP:-'SCTP|\[Serial\]|\[Disruptive\]|\[Flaky\]'}
trellis_lab=target/debug/trellis-lab
e2e=$TRELLIS_TOOLS_BIN/e2e.test
ginkgo=$TRELLIS_TOOLS_BIN/ginkgo

[[ -x $trellis_lab ]] || { log "build first: cargo build --workspace --bins"; exit 1; }
for tool in "$e2e" "$ginkgo"; do
	[[ -x $tool ]] || { log "no $tool: tools/bootstrap.sh builds it"; exit 1; }
done
# The suite's images (test/utils/image/manifest.go names them).
images=(trellis agnhost jessie-dnsutils)
log "images: ${images[*]} (tools/image/build.sh)"
tools/image/build.sh "${images[@]}" >/dev/null
$trellis_lab down --name "$lab" >/dev/null 2>&1 || true
cleanup() { [[ ${KEEP:-0} == 1 ]] || $trellis_lab down --name "$lab" >/dev/null 2>&1 || true; }
trap cleanup EXIT
log "lab $lab: $nodes real nodes ($runtime)"
$trellis_lab up --name "$lab" --nodes "$nodes" --real-nodes --runtime "$runtime" >/dev/null
archives=()
for image in "${images[@]}"; do archives+=("target/images/$image.oci.tar"); done
$trellis_lab import-image --name "$lab" "${archives[@]}" >/dev/null
kubeconfig=$($trellis_lab kubeconfig --name "$lab")
export KUBECONFIG=$kubeconfig
sets=()
while IFS= read -r value; do sets+=(--set "$value"); done < <($trellis_lab chart-values --name "$lab")
log "helm install trellis ${sets[*]}"
helm install trellis charts/trellis -n kube-system --wait --timeout 5m "${sets[@]}" >/dev/null
kubectl wait --for=condition=Ready nodes --all --timeout=120s >/dev/null
log "CoreDNS (kube-dns) rolling out"
kubectl -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null
log "e2e.test on $runtime: focus '$focus', skip '$skip', $procs processes (ginkgo)"
# --num-nodes: in parallel runs only the first process counts the nodes,
# the others would skip the specs that need two ("Requires at least 2").
start=$SECONDS
suite_log=target/conformance-$runtime.log
set +e
"$ginkgo" --procs="$procs" --no-color --timeout=50m \
	--focus="$focus" --skip="$skip" "$e2e" -- \
	--provider=local --kubeconfig="$kubeconfig" --num-nodes="$nodes" >"$suite_log" 2>&1
status=$?
set -e
grep -a -E '^(Ran [0-9]+ of|FAIL!|SUCCESS!|Ginkgo ran|Test Suite)' "$suite_log" | tail -5
grep -a -E '^\s*\[FAIL\]' "$suite_log" || true
log "done in $((SECONDS - start)) s (status $status; the whole log: $suite_log)"
exit $status
