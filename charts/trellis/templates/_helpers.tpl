{{/* The release's full name: "trellis" for a release called trellis. */}}
{{- define "trellis.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "trellis.serviceAccountName" -}}
{{- default (include "trellis.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "trellis.selectorLabels" -}}
app.kubernetes.io/name: trellis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "trellis.labels" -}}
{{ include "trellis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "trellis.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The user name the API server gives the agents' ServiceAccount. */}}
{{- define "trellis.agentUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "trellis.serviceAccountName" .) -}}
{{- end -}}

{{- define "trellis.metricsAddress" -}}
{{- if contains ":" .Values.metrics.bindAddress -}}
{{- printf "[%s]:%v" .Values.metrics.bindAddress .Values.metrics.port -}}
{{- else -}}
{{- printf "%s:%v" .Values.metrics.bindAddress .Values.metrics.port -}}
{{- end -}}
{{- end -}}

{{/*
Trellis needs Kubernetes 1.30 or newer (ValidatingAdmissionPolicy v1, node
information in bound service account tokens). Installing on an older
cluster fails here, with the version found. Rendering without a cluster
(`helm template`, GitOps tools) must work: offline, Helm reports a
placeholder version (v1.20.0 for a Helm built without release flags) and
`lookup` finds nothing, so only an explicit --kube-version older than 1.30
fails there. (Chart.yaml's kubeVersion would refuse the placeholder too.)
*/}}
{{- define "trellis.checkKubeVersion" -}}
{{- $version := .Capabilities.KubeVersion.Version -}}
{{- $online := lookup "v1" "Namespace" "" "kube-system" -}}
{{- if and (semverCompare "<1.30.0-0" $version) (or $online (ne $version "v1.20.0")) -}}
{{- fail (printf "Trellis needs Kubernetes 1.30 or newer (ValidatingAdmissionPolicy admissionregistration.k8s.io/v1, node-bound service account tokens); this cluster is %s" $version) -}}
{{- end -}}
{{- end -}}
