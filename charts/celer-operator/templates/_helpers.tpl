{{- define "celer-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "celer-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "celer-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "celer-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "celer-operator.labels" -}}
{{ include "celer-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "celer-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "celer-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "celer-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The PodDisruptionBudget API version. podDisruptionBudget.apiVersion when set; else policy/v1 when
the apiserver lists it (a real install) or when the target version is 1.21 or later or unknown;
policy/v1beta1 only for a target known to be older than 1.21 (.Capabilities.KubeVersion, which is
the apiserver's in a real install and `--kube-version` in helm template/lint). Without a view of
the API, helm template reports its own default version (1.32 for helm 3.17), so GitOps renders
policy/v1.
*/}}
{{- define "celer-operator.pdbApiVersion" -}}
{{- $explicit := .Values.podDisruptionBudget.apiVersion | default "" -}}
{{- if not (has $explicit (list "" "policy/v1" "policy/v1beta1")) -}}
{{- fail (printf "podDisruptionBudget.apiVersion must be \"\", \"policy/v1\" or \"policy/v1beta1\"; got %q" $explicit) -}}
{{- end -}}
{{- if $explicit -}}
{{- $explicit -}}
{{- else if .Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget" -}}
policy/v1
{{- else if semverCompare "<1.21-0" .Capabilities.KubeVersion.Version -}}
policy/v1beta1
{{- else -}}
policy/v1
{{- end -}}
{{- end -}}
