#!/usr/bin/env bash
# `make demo-clusters`: two lab clusters, `west` (west-n1 public, west-n2
# behind an endpoint-independent NAT) and `east` (east-n1 and east-n2 a
# site: one private network behind one endpoint-independent NAT, which does
# not hairpin; east-n3 behind a symmetric NAT), Trellis on every node,
# linked with `kubectl trellis cluster link`; then every pod pings every
# pod, and `kubectl trellis status` shows which paths are direct, which on
# a site's LAN and which relayed.
# Run from the repository root after `cargo build --workspace --bins`.
set -euo pipefail

LAB=${MULTI_LAB_NAME:-west}
OTHER=${MULTI_LAB_OTHER:-east}
lab() { target/debug/trellis-lab "$@"; }
step() { printf '\n== %s\n' "$*"; }

step "two clusters, each with its own etcd, kube-apiserver and controller-manager"
lab down --name "$LAB" >/dev/null 2>&1 || true
lab up --name "$LAB" --nodes 2 >/dev/null
lab add-cluster --name "$LAB" "$OTHER" --nodes 3

step "NAT routers: $LAB-n2 endpoint-independent; $OTHER-n1 and $OTHER-n2 a site behind one endpoint-independent NAT; $OTHER-n3 symmetric"
lab nat --name "$LAB" "$LAB-n2" --mode endpoint-independent
lab nat --name "$LAB" "$OTHER-n1" "$OTHER-n2" --mode endpoint-independent
lab nat --name "$LAB" "$OTHER-n3" --mode symmetric

step "Trellis on every node (the chart's pod), one pod per node"
lab mesh --name "$LAB" --pods 1 --quiet

# As a user would: both clusters' kubeconfigs, the kubectl plugin on PATH.
KUBECONFIG="$(lab kubeconfig --name "$LAB" --cluster "$LAB"):$(lab kubeconfig --name "$LAB" --cluster "$OTHER")"
export KUBECONFIG
export PATH="$PWD/target/debug:$PATH"

step "kubectl trellis cluster link --from $LAB --to $OTHER --wait"
kubectl trellis cluster link --from "$LAB" --to "$OTHER" --wait

step "every pod pings every pod (pairs without a direct path get a relay after 15 s)"
lab show --name "$LAB" --wait 120

for cluster in "$LAB" "$OTHER"; do
	step "kubectl trellis status --context $cluster"
	kubectl trellis status --context "$cluster"
done

cat <<EOF

The lab keeps running. Try, with
  export KUBECONFIG=$KUBECONFIG PATH=$PWD/target/debug:\$PATH
  kubectl trellis graph --context $LAB --format svg > mesh.svg
  kubectl --context $LAB annotate node $LAB-n1 trellis.dev/relay=true
  kubectl trellis cluster unlink --from $LAB --to $OTHER
Tear it down with: make demo-down
EOF
