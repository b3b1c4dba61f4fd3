{{/* Names, labels and the node's settings file. */}}

{{- define "mor-reward-node.name" -}}
mor-reward-node
{{- end }}

{{- define "mor-reward-node.fullname" -}}
{{- if contains .Values.nodeId .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Values.nodeId | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{- define "mor-reward-node.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mor-reward-node.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
mor.io/node-id: {{ .Values.nodeId | quote }}
{{- end }}

{{- define "mor-reward-node.labels" -}}
{{ include "mor-reward-node.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: reward-node
app.kubernetes.io/part-of: mor
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "mor-reward-node.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end }}

{{- define "mor-reward-node.tlsSecret" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "mor-reward-node.fullname" .)) -}}
{{- end }}

{{- define "mor-reward-node.tokensSecret" -}}
{{- .Values.auth.tokensSecretName | default (printf "%s-tokens" (include "mor-reward-node.fullname" .)) -}}
{{- end }}

{{- define "mor-reward-node.checkpointClaim" -}}
{{- .Values.checkpoint.existingClaim | default (printf "%s-checkpoint" (include "mor-reward-node.fullname" .)) -}}
{{- end }}

{{/* RewardNodeSettings as YAML: the user's `settings`, then what the chart owns (paths, ports, TLS). */}}
{{- define "mor-reward-node.settings" -}}
{{- $model := dict "kind" .Values.model.kind "checkpoint" (printf "/var/lib/mor/checkpoint/%s" .Values.checkpoint.path) "rm_weight" .Values.model.rmWeight "format_weight" .Values.model.formatWeight "length_weight" .Values.model.lengthWeight -}}
{{- if .Values.model.torchThreads }}{{- $_ := set $model "torch_threads" .Values.model.torchThreads -}}{{- end }}
{{- $server := dict "host" "0.0.0.0" "port" .Values.server.port "grace_s" .Values.server.graceSeconds "max_message_mb" .Values.server.maxMessageMb -}}
{{- $tls := dict "insecure" true -}}
{{- if .Values.tls.enabled -}}
{{- $tls = dict "cert" "/etc/mor/tls/tls.crt" "key" "/etc/mor/tls/tls.key" "ca_cert" "/etc/mor/tls/ca.crt" "require_client_auth" .Values.tls.requireClientAuth -}}
{{- end -}}
{{- $auth := dict -}}
{{- if .Values.auth.enabled -}}
{{- $auth = dict "tokens_file" "/etc/mor/auth/tokens.yaml" -}}
{{- end -}}
{{- if or .Values.auth.enabled (and .Values.tls.enabled .Values.tls.requireClientAuth) -}}
{{- /* Callers are identified by token and client certificate (which must agree); only allowedCallers may call. */ -}}
{{- $_ := set $auth "allowed_callers" .Values.auth.allowedCallers -}}
{{- $_ := set $auth "cert_identity" .Values.auth.certIdentity -}}
{{- end -}}
{{- $own := dict "node_id" .Values.nodeId "model" $model "server" $server "tls" $tls "auth" $auth "metrics" (dict "enabled" true "host" "0.0.0.0" "port" .Values.metrics.port) -}}
{{- if .Values.training.enabled -}}
{{- $_ := set $own "data_dir" (printf "/var/lib/mor/data/%s" .Values.training.dataPath) -}}
{{- end -}}
{{- $user := deepCopy (.Values.settings | default dict) -}}
{{- $userModel := (get $user "model") | default dict -}}
{{- $_ := set $own "model" (merge $model $userModel) -}}
{{- toYaml (mergeOverwrite $user $own) -}}
{{- end }}

{{/* The grpc.health.v1 probe command of the image. */}}
{{- define "mor-reward-node.healthcheck" -}}
exec:
  command: [python, -m, services.common.grpc.healthcheck, -q, --kind, reward-node, --config, /etc/mor/reward-node.yaml]
{{- end }}

{{/* Readiness/start-up probe handler by probes.kind. */}}
{{- define "mor-reward-node.probe" -}}
{{- if eq .Values.probes.kind "exec" -}}
{{ include "mor-reward-node.healthcheck" . }}
{{- else if eq .Values.probes.kind "grpc" -}}
grpc:
  port: {{ .Values.server.port }}
{{- else -}}
httpGet:
  path: /readyz
  port: metrics
{{- end }}
{{- end }}
