{{/* Names, labels and the services' settings files. */}}

{{- define "mor-server.fullname" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end }}

{{- define "mor-server.sampler.name" -}}{{ include "mor-server.fullname" . }}-sampler{{- end }}
{{- define "mor-server.orchestrator.name" -}}{{ include "mor-server.fullname" . }}-orchestrator{{- end }}

{{- define "mor-server.commonLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: mor
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "mor-server.sampler.selectorLabels" -}}
app.kubernetes.io/name: mor-sampler
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mor-server.orchestrator.selectorLabels" -}}
app.kubernetes.io/name: mor-orchestrator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mor-server.sampler.labels" -}}
{{ include "mor-server.commonLabels" . }}
{{ include "mor-server.sampler.selectorLabels" . }}
app.kubernetes.io/component: policy-sampler
{{- end }}

{{- define "mor-server.orchestrator.labels" -}}
{{ include "mor-server.commonLabels" . }}
{{ include "mor-server.orchestrator.selectorLabels" . }}
app.kubernetes.io/component: orchestrator
{{- end }}

{{- define "mor-server.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .appVersion) -}}
{{- end }}

{{- define "mor-server.sampler.tlsSecret" -}}
{{- .Values.sampler.tls.secretName | default (printf "%s-tls" (include "mor-server.sampler.name" .)) -}}
{{- end }}
{{- define "mor-server.orchestrator.tlsSecret" -}}
{{- .Values.orchestrator.tls.secretName | default (printf "%s-tls" (include "mor-server.orchestrator.name" .)) -}}
{{- end }}
{{- define "mor-server.orchestrator.clientTlsSecret" -}}
{{- .Values.orchestrator.clientTls.secretName | default (printf "%s-client-tls" (include "mor-server.orchestrator.name" .)) -}}
{{- end }}
{{- define "mor-server.orchestrator.tokensSecret" -}}
{{- .Values.orchestrator.auth.tokensSecretName | default (printf "%s-tokens" (include "mor-server.orchestrator.name" .)) -}}
{{- end }}
{{- define "mor-server.sampler.claim" -}}
{{- .Values.sampler.models.existingClaim | default (printf "%s-models" (include "mor-server.sampler.name" .)) -}}
{{- end }}
{{- define "mor-server.orchestrator.claim" -}}
{{- .Values.orchestrator.storage.existingClaim | default (printf "%s-storage" (include "mor-server.orchestrator.name" .)) -}}
{{- end }}

{{/* The client TLS section the orchestrator uses towards nodes and the sampler. */}}
{{- define "mor-server.clientTls" -}}
{{- toYaml (dict "ca_cert" "/etc/mor/client-tls/ca.crt" "cert" "/etc/mor/client-tls/tls.crt" "key" "/etc/mor/client-tls/tls.key") -}}
{{- end }}

{{/* SamplerSettings. */}}
{{- define "mor-server.sampler.settings" -}}
{{- $s := .Values.sampler -}}
{{- $tls := dict "insecure" true -}}
{{- if $s.tls.enabled -}}
{{- $tls = dict "cert" "/etc/mor/tls/tls.crt" "key" "/etc/mor/tls/tls.key" "ca_cert" "/etc/mor/tls/ca.crt" "require_client_auth" $s.tls.requireClientAuth -}}
{{- end -}}
{{- $own := dict "backend" $s.backend "model" (dict "path" (printf "/var/lib/mor/models/%s" $s.modelPath)) "server" (dict "host" "0.0.0.0" "port" $s.port "grace_s" $s.graceSeconds) "tls" $tls "metrics" (dict "enabled" true "host" "0.0.0.0" "port" $s.metricsPort) -}}
{{- if and $s.tls.enabled $s.tls.requireClientAuth -}}
{{- /* Callers are identified by their client certificate: only the orchestrator may generate or push weights. */ -}}
{{- $only := list .Values.orchestrator.identity -}}
{{- $_ := set $own "auth" (dict "cert_identity" .Values.orchestrator.certIdentity "methods" (dict "Generate" $only "UpdateWeights" $only)) -}}
{{- end -}}
{{- toYaml (mergeOverwrite (deepCopy ($s.settings | default dict)) $own) -}}
{{- end }}

{{/* OrchestratorSettings (mode serve). */}}
{{- define "mor-server.orchestrator.settings" -}}
{{- $o := .Values.orchestrator -}}
{{- $tls := dict "insecure" true -}}
{{- if $o.tls.enabled -}}
{{- $tls = dict "cert" "/etc/mor/tls/tls.crt" "key" "/etc/mor/tls/tls.key" "ca_cert" "/etc/mor/tls/ca.crt" "require_client_auth" $o.tls.requireClientAuth -}}
{{- end -}}
{{- $auth := dict -}}
{{- if $o.auth.enabled -}}
{{- $auth = dict "tokens_file" "/etc/mor/auth/tokens.yaml" -}}
{{- end -}}
{{- if or $o.auth.enabled (and $o.tls.enabled $o.tls.requireClientAuth) -}}
{{- /* allowed_callers are the operators (run control, any node); others touch only their own node. */ -}}
{{- $_ := set $auth "allowed_callers" $o.auth.allowedCallers -}}
{{- $_ := set $auth "cert_identity" $o.certIdentity -}}
{{- end -}}
{{- toYaml (dict "runs_dir" "/var/lib/mor/runs" "max_concurrent_runs" $o.maxConcurrentRuns "server" (dict "host" "0.0.0.0" "port" $o.port "grace_s" $o.graceSeconds) "tls" $tls "auth" $auth "metrics" (dict "enabled" true "host" "0.0.0.0" "port" $o.metricsPort)) -}}
{{- end }}

{{/* RunConfig: the user's run section plus nodes and sampler from the chart. */}}
{{- define "mor-server.run" -}}
{{- $client := include "mor-server.clientTls" . | fromYaml -}}
{{- $nodes := list -}}
{{- range .Values.rewardNodes -}}
{{- $nodes = append $nodes (dict "node_id" .nodeId "address" .address "timeout_s" (.timeoutSeconds | default 30) "tls" $client "auth" (dict "token_file" (printf "/etc/mor/node-tokens/%s.token" .nodeId))) -}}
{{- end -}}
{{- $run := deepCopy (.Values.orchestrator.run | default dict) -}}
{{- $_ := set $run "nodes" $nodes -}}
{{- if .Values.sampler.enabled -}}
{{- $stls := dict "insecure" true -}}
{{- if .Values.sampler.tls.enabled }}{{ $stls = $client }}{{ end -}}
{{- $_ := set $run "sampler" (dict "address" (printf "%s:%v" (include "mor-server.sampler.name" .) .Values.sampler.port) "tls" $stls) -}}
{{- end -}}
{{- toYaml $run -}}
{{- end }}

{{- define "mor-server.healthcheck" -}}
exec:
  command: [python, -m, services.common.grpc.healthcheck, -q, --kind, {{ .kind }}, --config, {{ .config }}]
{{- end }}

{{/* The orchestrator's pod template; .serve: Deployment (API, probes) or Job (one run). */}}
{{- define "mor-server.orchestrator.pod" -}}
{{- $root := .root -}}
{{- $o := $root.Values.orchestrator -}}
metadata:
  labels:
    {{- include "mor-server.orchestrator.labels" $root | nindent 4 }}
  annotations:
    checksum/config: {{ printf "%s%s" (include "mor-server.orchestrator.settings" $root) (include "mor-server.run" $root) | sha256sum }}
spec:
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if not .serve }}
  restartPolicy: Never
  {{- end }}
  automountServiceAccountToken: false
  {{- with .subdomain }}
  subdomain: {{ . }}   # pods <job>-<index>.<subdomain> resolve: the trainer's rendezvous address
  {{- end }}
  terminationGracePeriodSeconds: {{ add $o.graceSeconds 5 }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .container | default "orchestrator" }}
      image: {{ include "mor-server.image" (dict "image" $o.image "appVersion" $root.Chart.AppVersion) | quote }}
      imagePullPolicy: {{ $o.image.pullPolicy }}
      {{- with .command }}
      command: {{ toJson . }}
      {{- end }}
      args: {{ toJson .args }}
      env:
        - name: MOR_CONFIG
          value: /etc/mor/orchestrator.yaml
      {{- if .serve }}
      ports:
        - name: grpc
          containerPort: {{ $o.port }}
          protocol: TCP
        - name: metrics
          containerPort: {{ $o.metricsPort }}
          protocol: TCP
      readinessProbe:
        {{- include "mor-server.healthcheck" (dict "kind" "orchestrator" "config" "/etc/mor/orchestrator.yaml") | nindent 8 }}
        periodSeconds: 10
        timeoutSeconds: 5
      livenessProbe:
        httpGet:
          path: /livez
          port: metrics
        periodSeconds: 10
        timeoutSeconds: 5
      {{- end }}
      resources:
        {{- toYaml $o.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/mor/orchestrator.yaml
          subPath: orchestrator.yaml
          readOnly: true
        - name: config
          mountPath: /etc/mor/run.yaml
          subPath: run.yaml
          readOnly: true
        - name: config
          mountPath: /etc/mor/submit-run.py
          subPath: submit-run.py
          readOnly: true
        {{- if and .serve $o.tls.enabled }}
        - name: tls
          mountPath: /etc/mor/tls
          readOnly: true
        {{- end }}
        {{- if and .serve $o.auth.enabled }}
        - name: tokens
          mountPath: /etc/mor/auth
          readOnly: true
        {{- end }}
        - name: client-tls
          mountPath: /etc/mor/client-tls
          readOnly: true
        - name: node-tokens
          mountPath: /etc/mor/node-tokens
          readOnly: true
        - name: storage
          mountPath: /var/lib/mor
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: config
      configMap:
        name: {{ include "mor-server.orchestrator.name" $root }}
    {{- if and .serve $o.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ include "mor-server.orchestrator.tlsSecret" $root }}
        defaultMode: 0440
    {{- end }}
    {{- if and .serve $o.auth.enabled }}
    - name: tokens
      secret:
        secretName: {{ include "mor-server.orchestrator.tokensSecret" $root }}
        defaultMode: 0440
        items:
          - key: tokens.yaml
            path: tokens.yaml
    {{- end }}
    - name: client-tls
      secret:
        secretName: {{ include "mor-server.orchestrator.clientTlsSecret" $root }}
        defaultMode: 0440
    - name: node-tokens
      projected:
        defaultMode: 0440
        sources:
          {{- range $root.Values.rewardNodes }}
          - secret:
              name: {{ .tokenSecret }}
              items:
                - key: token
                  path: {{ .nodeId }}.token
          {{- end }}
    - name: storage
      persistentVolumeClaim:
        claimName: {{ include "mor-server.orchestrator.claim" $root }}
    - name: tmp
      emptyDir: {}
  {{- with $o.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $o.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $o.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* The trainer under torchrun: `sh -c` so that the rank variable the launcher sets (JOB_COMPLETION_INDEX
     of an indexed Job, RANK of a PyTorchJob) and MASTER_ADDR are read at start. */}}
{{- define "mor-server.orchestrator.torchrun" -}}
{{- $t := .root.Values.orchestrator.trainer -}}
{{- $run := "-m services.cli orchestrator run --config /etc/mor/run.yaml --resume --quiet" -}}
{{- if le (int $t.nodes) 1 -}}
exec python -m torch.distributed.run --standalone --nproc-per-node {{ $t.nprocPerNode }} {{ $run }}
{{- else -}}
exec python -m torch.distributed.run --nnodes {{ $t.nodes }} --nproc-per-node {{ $t.nprocPerNode }} --node-rank "${{ .rankVar }}" --master-addr {{ .masterAddr }} --master-port {{ .masterPort | default $t.rendezvousPort }} {{ $run }}
{{- end -}}
{{- end }}
