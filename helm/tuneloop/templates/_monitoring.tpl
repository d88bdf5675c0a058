{{/*
ServiceMonitor endpoint authorization for the gateway's metrics: the admin key from
monitoring.metricsKey, unless serving.metricsPublic serves them without a key.
*/}}
{{- define "tuneloop.metricsAuthorization" -}}
{{- if not .Values.serving.metricsPublic }}
authorization:
  type: Bearer
  credentials:
    name: {{ include "tuneloop.metricsKeySecretName" . }}
    key: {{ .Values.monitoring.metricsKey.secretKey }}
{{- end }}
{{- end }}

{{/*
A ServiceMonitor: (dict "ctx" $ "name" "gateway" "component" "serving" "path" "/metrics" "auth" bool).
Each sets its own `job` label, so the gateway's and the engine's targets (the same pod and port,
two paths) never produce clashing series such as `up`.
*/}}
{{- define "tuneloop.serviceMonitor" -}}
{{- $ctx := .ctx }}
{{- $fullname := include "tuneloop.fullname" $ctx }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ $fullname }}-{{ .name }}
  labels:
    {{- include "tuneloop.componentLabels" (dict "ctx" $ctx "component" "monitoring") | nindent 4 }}
    {{- with $ctx.Values.monitoring.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "tuneloop.componentSelectorLabels" (dict "ctx" $ctx "component" .component) | nindent 6 }}
  namespaceSelector:
    matchNames:
      - {{ $ctx.Release.Namespace }}
  endpoints:
    - port: http
      path: {{ .path }}
      interval: {{ $ctx.Values.monitoring.serviceMonitor.interval }}
      {{- if .auth }}
      {{- include "tuneloop.metricsAuthorization" $ctx | trim | nindent 6 }}
      {{- end }}
      relabelings:
        - action: replace
          targetLabel: job
          replacement: {{ $fullname }}-{{ .name }}
{{- end }}
