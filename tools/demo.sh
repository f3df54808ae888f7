#!/usr/bin/env bash
# `make demo`: Trellis as a user meets it. A lab cluster of real nodes
# (containerd, kubelet, kube-proxy; CoreDNS), the images built here and
# imported (no registry is reachable), `helm install` of the chart, then a
# plain Deployment spread over the nodes: `kubectl get pods -o wide`, a
# request from a pod to a pod on another node, requests to the Service by
# name, and the mesh's peers with their handshakes.
# Run from the repository root after `cargo build --workspace --bins`.
#
#   LAB_NAME=demo NODES=3 tools/demo.sh
set -euo pipefail

lab_name=${LAB_NAME:-demo}
nodes=${NODES:-3}
lab() { target/debug/trellis-lab "$@"; }
step() { printf '\n== %s\n' "$*"; }
: "${TRELLIS_TOOLS_BIN:?run through make demo (it sets TRELLIS_TOOLS_BIN)}"
export PATH="$PWD/target/debug:$TRELLIS_TOOLS_BIN:$PATH"

step "images: trellis, agnhost (built here; tools/image/build.sh)"
tools/image/build.sh trellis agnhost | cut -d' ' -f1,2

step "a cluster of $nodes real nodes: containerd, kubelet and kube-proxy on each"
lab down --name "$lab_name" >/dev/null 2>&1 || true
lab up --name "$lab_name" --nodes "$nodes" --real-nodes 2>&1 | grep -E 'registered|lab is up' | sed 's/^.*INFO //'
lab import-image --name "$lab_name" target/images/trellis.oci.tar target/images/agnhost.oci.tar >/dev/null
KUBECONFIG=$(lab kubeconfig --name "$lab_name")
export KUBECONFIG
kubectl get nodes

sets=()
while IFS= read -r value; do sets+=(--set "$value"); done < <(lab chart-values --name "$lab_name")
step "helm install trellis charts/trellis -n kube-system ${sets[*]}"
helm install trellis charts/trellis -n kube-system --wait --timeout 5m "${sets[@]}" | sed -n '1,6p'
kubectl wait --for=condition=Ready nodes --all --timeout=120s >/dev/null
kubectl -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null
kubectl get nodes -o wide

step "a plain Deployment of $nodes web servers, one per node, and a Service"
kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: $nodes
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: DoNotSchedule
          labelSelector:
            matchLabels: {app: web}
      containers:
        - name: web
          image: registry.k8s.io/e2e-test-images/agnhost:2.56
          imagePullPolicy: Never
          args: [netexec, --http-port=8080]
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
EOF
kubectl rollout status deployment/web --timeout=120s >/dev/null
kubectl get pods -o wide

mapfile -t pods < <(kubectl get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
from=${pods[0]}
to=${pods[1]}
to_ips=$(kubectl get pod "$to" -o jsonpath='{range .status.podIPs[*]}{.ip}{" "}{end}')
from_node=$(kubectl get pod "$from" -o jsonpath='{.spec.nodeName}')
to_node=$(kubectl get pod "$to" -o jsonpath='{.spec.nodeName}')
step "pod to pod across nodes: $from ($from_node) -> $to ($to_node)"
for ip in $to_ips; do
	url="http://$ip:8080/hostname"
	[[ $ip == *:* ]] && url="http://[$ip]:8080/hostname"
	printf '  curl %-38s -> %s\n' "$url" "$(kubectl exec "$from" -- curl -sS -m 5 "$url")"
done

step "the Service by name (CoreDNS, then kube-proxy to any node's pod): from $from"
for _ in 1 2 3 4 5 6; do
	printf '  curl http://web/hostname -> %s\n' "$(kubectl exec "$from" -- curl -sS -m 5 http://web/hostname)"
done

step "the mesh: kubectl trellis status (peers, paths, handshakes)"
kubectl trellis status
step "wg show on $from_node (the device in the node's Trellis pod)"
agent=$(kubectl -n kube-system get pods -l app.kubernetes.io/name=trellis \
	--field-selector "spec.nodeName=$from_node" -o jsonpath='{.items[0].metadata.name}')
kubectl -n kube-system exec "$agent" -c agent -- wg show

cat <<EOF

The lab keeps running. Try, with
  export KUBECONFIG=$KUBECONFIG PATH=$PWD/target/debug:$TRELLIS_TOOLS_BIN:\$PATH
  kubectl get pods -A -o wide
  kubectl scale deployment web --replicas=6 && kubectl get pods -o wide
  kubectl trellis graph
Tear it down with: make demo-down
EOF
