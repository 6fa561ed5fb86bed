{{- define "ctagg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ctagg.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ctagg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ctagg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ctagg.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ctagg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: aggregator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The Prometheus job label of ctagg's metrics: the ServiceMonitor sets it (jobLabel) and the
alert rules select it, from this one definition. */}}
{{- define "ctagg.metricsJob" -}}
{{- default (include "ctagg.fullname" .) .Values.serviceMonitor.jobName | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ctagg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ctagg.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ctagg.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The ctagg config file: the user's config with the keys the chart owns filled in. */}}
{{- define "ctagg.config" -}}
{{- $forced := dict "state" (dict "path" "/var/lib/ctagg/state.db") "service" (dict "health_host" "0.0.0.0" "health_port" (int .Values.service.port)) -}}
{{- $cfg := mustMergeOverwrite (deepCopy (default (dict) .Values.config)) $forced -}}
{{- toYaml $cfg -}}
{{- end -}}
