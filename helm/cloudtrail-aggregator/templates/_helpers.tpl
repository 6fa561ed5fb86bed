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

{{/* The installation's shard count: `replicas`, or with `replicas: 0` (scaled to zero for a
resize) the config's shard.count; a config count that disagrees with replicas > 0 fails. */}}
{{- define "ctagg.shardCount" -}}
{{- $replicas := int .Values.replicas -}}
{{- $shard := default (dict) (default (dict) .Values.config).shard -}}
{{- $count := 0 -}}
{{- if hasKey $shard "count" -}}{{- $count = int $shard.count -}}{{- end -}}
{{- if gt $replicas 0 -}}
{{- if and (gt $count 0) (ne $count $replicas) -}}
{{- fail (printf "config.shard.count (%d) differs from replicas (%d): leave config.shard.count out, the chart sets it from replicas" $count $replicas) -}}
{{- end -}}
{{- $replicas -}}
{{- else if gt $count 0 -}}
{{- $count -}}
{{- else -}}
{{- fail "replicas: 0 (scaled to zero, e.g. for a resize) needs config.shard.count: the installation's shard count, which the config must keep while no pod runs" -}}
{{- end -}}
{{- end -}}

{{/* The ctagg config file: the user's config with the keys the chart owns filled in. A fixed
shard.index with several shards would make every pod the same shard: refused. */}}
{{- define "ctagg.config" -}}
{{- $shard := default (dict) (default (dict) .Values.config).shard -}}
{{- if and (hasKey $shard "index") (not (kindIs "invalid" (index $shard "index"))) (gt (int (include "ctagg.shardCount" .)) 1) -}}
{{- fail "config.shard.index is set: leave it out, each pod's shard index is its StatefulSet ordinal (CTAGG_SHARD_INDEX / POD_NAME); a fixed index would make every pod the same shard" -}}
{{- end -}}
{{- $forced := dict "state" (dict "path" "/var/lib/ctagg/state.db") "service" (dict "health_host" "0.0.0.0" "health_port" (int .Values.service.port)) "shard" (dict "count" (int (include "ctagg.shardCount" .))) -}}
{{- $cfg := mustMergeOverwrite (deepCopy (default (dict) .Values.config)) $forced -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The pod anti-affinity of `antiAffinity` (soft: preferred, hard: required, none), used
when `affinity` is empty and there is more than one replica. */}}
{{- define "ctagg.affinity" -}}
{{- if .Values.affinity -}}
{{- toYaml .Values.affinity -}}
{{- else if and (gt (int .Values.replicas) 1) (ne .Values.antiAffinity "none") -}}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (fromYaml (include "ctagg.selectorLabels" .))) -}}
podAntiAffinity:
{{- if eq .Values.antiAffinity "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - {{- toYaml $term | nindent 6 }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        {{- toYaml $term | nindent 8 }}
{{- end }}
{{- end -}}
{{- end -}}
