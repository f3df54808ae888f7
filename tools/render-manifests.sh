#!/usr/bin/env bash
# Prints manifests/trellis.yaml: the chart rendered with its default values,
# CRDs included. `make manifests` writes it; a test fails when the file
# differs from what this prints.
set -euo pipefail
cd "$(dirname "$0")/.."
helm="${HELM:-helm}"
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/trellis/Chart.yaml)
cat <<HEADER
# Trellis ${version}: charts/trellis rendered with its default values by
# \`make manifests\` (do not edit by hand). Install with
#   kubectl apply --server-side -f manifests/trellis.yaml
# A cluster without kube-proxy needs the chart instead, with
#   --set apiServer.host=ADDRESS,apiServer.port=PORT
HEADER
"$helm" template trellis charts/trellis --namespace kube-system --kube-version 1.34.0 --include-crds
