{{/*
Names, labels and the pieces every tuneloop pod shares (image, state environment, volumes).
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "tuneloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource name prefix: release name plus chart name, unless the release name already holds it.
Truncated to 40 characters so that suffixed names (KubeRay's "<cluster>-head-svc", CronJob Jobs)
stay within Kubernetes' limits.
*/}}
{{- define "tuneloop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "tuneloop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "tuneloop.labels" -}}
helm.sh/chart: {{ include "tuneloop.chart" . }}
{{ include "tuneloop.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tuneloop
{{- end }}

{{/* Selector labels of the release. */}}
{{- define "tuneloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tuneloop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component's objects: (dict "ctx" $ "component" "serving"). */}}
{{- define "tuneloop.componentLabels" -}}
{{ include "tuneloop.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "serving"). */}}
{{- define "tuneloop.componentSelectorLabels" -}}
{{ include "tuneloop.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The ServiceAccount tuneloop pods run as. */}}
{{- define "tuneloop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tuneloop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the RayCluster (KubeRay names its head Service "<this>-head-svc"). */}}
{{- define "tuneloop.rayClusterName" -}}
{{- printf "%s-ray" (include "tuneloop.fullname" .) }}
{{- end }}

{{/*
Name of the example RayJob and its ConfigMap. Short on purpose: KubeRay derives the names of the
job's RayCluster and its Services from it, and those must stay within 63 characters.
*/}}
{{- define "tuneloop.exampleJobName" -}}
{{- printf "%s-train" (include "tuneloop.fullname" .) }}
{{- end }}

{{/* Name of the Secret holding Ray's auth token (key auth_token). */}}
{{- define "tuneloop.rayAuthSecretName" -}}
{{- default (printf "%s-ray-auth" (include "tuneloop.fullname" .)) .Values.training.rayCluster.auth.existingSecret }}
{{- end }}

{{/* Name of the Secret holding the control API's bearer token. */}}
{{- define "tuneloop.controlTokenSecretName" -}}
{{- default (printf "%s-control-token" (include "tuneloop.fullname" .)) .Values.control.auth.existingSecret }}
{{- end }}

{{/* Name of the Secret holding the registry URL. */}}
{{- define "tuneloop.dbSecretName" -}}
{{- default (printf "%s-db" (include "tuneloop.fullname" .)) .Values.database.secretName }}
{{- end }}

{{/* Name of the Secret holding the capture store's URL: the registry's Secret unless set. */}}
{{- define "tuneloop.captureDbSecretName" -}}
{{- default (include "tuneloop.dbSecretName" .) .Values.database.capture.secretName }}
{{- end }}

{{/* Name of the Secret holding the admin key Prometheus scrapes with. */}}
{{- define "tuneloop.metricsKeySecretName" -}}
{{- default (printf "%s-metrics-key" (include "tuneloop.fullname" .)) .Values.monitoring.metricsKey.secretName }}
{{- end }}

{{/* Name of the artifacts claim (type volume). */}}
{{- define "tuneloop.artifactsClaimName" -}}
{{- default (printf "%s-artifacts" (include "tuneloop.fullname" .)) .Values.artifacts.volume.existingClaim }}
{{- end }}

{{/* The image reference: (dict "ctx" $ "gpu" true) picks the GPU variant. */}}
{{- define "tuneloop.image" -}}
{{- $v := .ctx.Values.image }}
{{- $tag := default .ctx.Chart.AppVersion $v.tag }}
{{- if .gpu }}
{{- $tag = printf "%s%s" $tag $v.gpuTagSuffix }}
{{- end }}
{{- printf "%s:%s" $v.repository $tag }}
{{- end }}

{{/*
Resources plus GPUs: (dict "resources" .Values.x.resources "gpus" N "ctx" $); N = 0 adds none.
*/}}
{{- define "tuneloop.resources" -}}
{{- $resources := deepCopy (.resources | default dict) }}
{{- if and .ctx.Values.gpu.enabled (gt (int .gpus) 0) }}
{{- $limits := deepCopy (get $resources "limits" | default dict) }}
{{- $_ := set $limits .ctx.Values.gpu.resourceName (int .gpus) }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/*
The environment telling tuneloop where its state is: the registry and the capture store (Postgres
URLs from a Secret, by default the same one),
the artifact store (S3 with optional keys, or the shared volume), and writable folders on a
read-only root file system. (dict "ctx" $ "cache" true) puts models and the local cache of stored
versions on the model cache volume (/cache); without it they stay under TUNELOOP_HOME (an emptyDir).
Every tuneloop container gets it.
*/}}
{{- define "tuneloop.env" -}}
{{- $cache := .cache }}
{{- with .ctx }}
- name: HOME
  value: /home/tuneloop
- name: TUNELOOP_HOME
  value: /var/lib/tuneloop
{{- if $cache }}
- name: TUNELOOP_MODELS_DIR
  value: /cache/models
- name: TUNELOOP_CACHE_DIR
  value: /cache/tuneloop
{{- end }}
- name: TUNELOOP_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: TUNELOOP_DB_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "tuneloop.dbSecretName" . }}
      key: {{ .Values.database.secretKey }}
{{- /* One capture store for every serving replica and the control plane (feedback may reach any
replica; the drift checks read what all of them captured): by default the registry's database. */}}
- name: TUNELOOP_CAPTURE_DB_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "tuneloop.captureDbSecretName" . }}
      key: {{ default .Values.database.secretKey .Values.database.capture.secretKey }}
{{- if eq .Values.artifacts.type "s3" }}
- name: TUNELOOP_ARTIFACTS
  value: {{ .Values.artifacts.s3.url | quote }}
{{- with .Values.artifacts.s3.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.artifacts.s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.artifacts.s3.credentials }}
{{- if .secretName }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- else }}
- name: TUNELOOP_ARTIFACTS
  value: /artifacts
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volume mounts matching "tuneloop.volumes"; (dict "ctx" $ "cache" true) adds the model cache. */}}
{{- define "tuneloop.volumeMounts" -}}
- name: home
  mountPath: /home/tuneloop
- name: state
  mountPath: /var/lib/tuneloop
- name: tmp
  mountPath: /tmp
{{- if .cache }}
- name: model-cache
  mountPath: /cache
{{- end }}
{{- if eq .ctx.Values.artifacts.type "volume" }}
- name: artifacts
  mountPath: /artifacts
{{- end }}
{{- end }}

{{/* The writable volumes of a read-only root file system, plus the model cache and artifacts. */}}
{{- define "tuneloop.volumes" -}}
- name: home
  emptyDir: {}
- name: state
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- if .cache }}
- name: model-cache
  {{- if .ctx.Values.models.cache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .ctx.Values.models.cache.existingClaim }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .ctx.Values.models.cache.sizeLimit }}
  {{- end }}
{{- end }}
{{- if eq .ctx.Values.artifacts.type "volume" }}
- name: artifacts
  persistentVolumeClaim:
    claimName: {{ include "tuneloop.artifactsClaimName" .ctx }}
{{- end }}
{{- end }}

{{/* A /dev/shm volume in memory: (dict "sizeLimit" "8Gi"). */}}
{{- define "tuneloop.shmVolume" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .sizeLimit }}
{{- end }}

{{/* Init container that pulls the base models into the model cache (models.pull). */}}
{{- define "tuneloop.modelPullInitContainer" -}}
{{- if .ctx.Values.models.pull.enabled }}
- name: pull-models
  image: {{ include "tuneloop.image" (dict "ctx" .ctx "gpu" .gpu) }}
  imagePullPolicy: {{ .ctx.Values.image.pullPolicy }}
  command:
    - /bin/sh
    - -ec
    - |
      for name in "$@"; do tuneloop models pull "$name"; done
    - pull-models
    {{- range .ctx.Values.models.pull.names }}
    - {{ . | quote }}
    {{- end }}
  env:
    {{- include "tuneloop.env" (dict "ctx" .ctx "cache" true) | nindent 4 }}
  securityContext:
    {{- toYaml .ctx.Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml .ctx.Values.models.pull.resources | nindent 4 }}
  volumeMounts:
    {{- include "tuneloop.volumeMounts" (dict "ctx" .ctx "cache" true) | nindent 4 }}
{{- end }}
{{- end }}

{{/* Tolerations: a component's own, plus the GPU ones when (dict ... "gpu" true). */}}
{{- define "tuneloop.tolerations" -}}
{{- $all := concat (.tolerations | default list) (ternary (.ctx.Values.gpu.tolerations | default list) list (and .gpu .ctx.Values.gpu.enabled)) }}
{{- with $all }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Node selector: a component's own, plus the GPU one when (dict ... "gpu" true). */}}
{{- define "tuneloop.nodeSelector" -}}
{{- $selector := deepCopy (.nodeSelector | default dict) }}
{{- if and .gpu .ctx.Values.gpu.enabled }}
{{- $selector = merge $selector (.ctx.Values.gpu.nodeSelector | default dict) }}
{{- end }}
{{- with $selector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
What the evaluation suites need, for the control plane's scheduler and the evaluation CronJob: the
gateway they call (the serving Service, so they measure what users get) and the admin key they call
it with (the same Secret Prometheus scrapes with).
*/}}
{{- define "tuneloop.evalEnv" -}}
- name: TUNELOOP_GATEWAY_URL
  value: {{ printf "http://%s-serving:8000" (include "tuneloop.fullname" .) | quote }}
- name: TUNELOOP_EVAL_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "tuneloop.metricsKeySecretName" . }}
      key: {{ .Values.monitoring.metricsKey.secretKey }}
      optional: true
{{- end }}

{{/*
A list of arguments as one shell-quoted string (read back with Python's shlex.split): each in single
quotes, a single quote inside written as '"'"'.
*/}}
{{- define "tuneloop.shellArgs" -}}
{{- $quoted := list }}
{{- range . }}
{{- $quoted = append $quoted (printf "'%s'" (replace "'" "'\"'\"'" (toString .))) }}
{{- end }}
{{- join " " $quoted }}
{{- end }}
