{{/* The chart name, or nameOverride. */}}
{{- define "fastim-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of every object: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<chart>".
*/}}
{{- define "fastim-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "fastim-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the operator. */}}
{{- define "fastim-operator.labels" -}}
{{ include "fastim-operator.selectorLabels" . }}
{{ include "fastim-operator.commonLabels" . }}
{{- end }}

{{/* Labels of everything the release creates (also the example IMCluster). */}}
{{- define "fastim-operator.commonLabels" -}}
helm.sh/chart: {{ include "fastim-operator.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fastim
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "fastim-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fastim-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "fastim-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fastim-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository:tag, the tag defaulting to the appVersion. */}}
{{- define "fastim-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the example IMCluster goes. */}}
{{- define "fastim-operator.exampleNamespace" -}}
{{- .Values.example.namespace | default .Values.watchNamespace | default .Release.Namespace }}
{{- end }}
