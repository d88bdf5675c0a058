{{/*
The spec of a KubeRay cluster for training, shared by the RayCluster and the example RayJob:
(dict "ctx" $ "jobConfigMap" "") — a non-empty jobConfigMap is mounted at /etc/tuneloop/job in every
Ray pod, so the job's driver and workers read the same spec and data files.

Every Ray pod runs the tuneloop image (tuneloop, Ray and vLLM inside; the GPU variant for the GPU
group) with the same state environment as the rest of tuneloop, so `tuneloop train` publishes to the
same registry and artifact store. KubeRay writes the `ray start` command itself.
*/}}
{{- define "tuneloop.ray.clusterSpec" -}}
{{- $ctx := .ctx }}
{{- $ray := $ctx.Values.training.rayCluster }}
{{- $job := .jobConfigMap }}
rayVersion: {{ $ray.rayVersion | quote }}
enableInTreeAutoscaling: {{ $ray.autoscaling.enabled }}
{{- if $ray.autoscaling.enabled }}
autoscalerOptions:
  idleTimeoutSeconds: {{ $ray.autoscaling.idleTimeoutSeconds }}
  securityContext:
    {{- toYaml $ctx.Values.securityContext | nindent 4 }}
  env:
    - name: HOME
      value: /home/tuneloop
  volumeMounts:
    - name: home
      mountPath: /home/tuneloop
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- if $ray.auth.enabled }}
authOptions:
  mode: token
  secretName: {{ include "tuneloop.rayAuthSecretName" $ctx }}
{{- end }}
headGroupSpec:
  serviceType: ClusterIP
  rayStartParams: {{ include "tuneloop.ray.startParams" $ray.head.rayStartParams }}
  template:
    {{- include "tuneloop.ray.podTemplate" (dict "ctx" $ctx "group" $ray.head "gpus" 0 "name" "ray-head" "head" true "job" $job) | trim | nindent 4 }}
workerGroupSpecs:
  {{- with $ray.cpuWorkers }}
  {{- if .enabled }}
  - groupName: cpu
    replicas: {{ .replicas }}
    minReplicas: {{ .minReplicas }}
    maxReplicas: {{ .maxReplicas }}
    rayStartParams: {{ include "tuneloop.ray.startParams" .rayStartParams }}
    template:
      {{- include "tuneloop.ray.podTemplate" (dict "ctx" $ctx "group" . "gpus" 0 "name" "ray-worker" "head" false "job" $job) | trim | nindent 6 }}
  {{- end }}
  {{- end }}
  {{- with $ray.gpuWorkers }}
  {{- if and .enabled $ctx.Values.gpu.enabled }}
  - groupName: gpu
    replicas: {{ .replicas }}
    minReplicas: {{ .minReplicas }}
    maxReplicas: {{ .maxReplicas }}
    rayStartParams: {{ include "tuneloop.ray.startParams" .rayStartParams }}
    template:
      {{- include "tuneloop.ray.podTemplate" (dict "ctx" $ctx "group" . "gpus" .gpusPerWorker "name" "ray-worker" "head" false "job" $job) | trim | nindent 6 }}
  {{- end }}
  {{- end }}
{{- end }}

{{/*
One Ray pod template: (dict "ctx" $ "group" <values of the group> "gpus" N "name" "ray-head"
"head" bool "job" <ConfigMap name or "">).
*/}}
{{- define "tuneloop.ray.podTemplate" -}}
{{- $ctx := .ctx }}
{{- $ray := $ctx.Values.training.rayCluster }}
{{- $gpu := gt (int .gpus) 0 }}
metadata:
  labels:
    {{- include "tuneloop.componentLabels" (dict "ctx" $ctx "component" "training") | nindent 4 }}
spec:
  {{- /* With the in-tree autoscaler KubeRay gives the head its own ServiceAccount with the RBAC the autoscaler needs. */}}
  {{- if not (and .head $ray.autoscaling.enabled) }}
  serviceAccountName: {{ include "tuneloop.serviceAccountName" $ctx }}
  automountServiceAccountToken: false
  {{- end }}
  {{- with $ctx.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $ctx.Values.podSecurityContext | nindent 4 }}
  {{- with (include "tuneloop.modelPullInitContainer" (dict "ctx" $ctx "gpu" $gpu) | trim) }}
  initContainers:
    {{- . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .name }}
      image: {{ include "tuneloop.image" (dict "ctx" $ctx "gpu" $gpu) }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      env:
        {{- include "tuneloop.env" (dict "ctx" $ctx "cache" true) | nindent 8 }}
      {{- if .head }}
      ports:
        - name: gcs-server
          containerPort: 6379
        - name: dashboard
          containerPort: 8265
        - name: client
          containerPort: 10001
        - name: metrics
          containerPort: 8080
      {{- end }}
      securityContext:
        {{- toYaml $ctx.Values.securityContext | nindent 8 }}
      resources:
        {{- include "tuneloop.resources" (dict "resources" .group.resources "gpus" .gpus "ctx" $ctx) | nindent 8 }}
      volumeMounts:
        {{- include "tuneloop.volumeMounts" (dict "ctx" $ctx "cache" true) | nindent 8 }}
        - name: dshm
          mountPath: /dev/shm
        {{- if .job }}
        - name: job
          mountPath: /etc/tuneloop/job
          readOnly: true
        {{- end }}
  volumes:
    {{- include "tuneloop.volumes" (dict "ctx" $ctx "cache" true) | nindent 4 }}
    {{- include "tuneloop.shmVolume" (dict "sizeLimit" $ray.shmSizeLimit) | nindent 4 }}
    {{- if .job }}
    - name: job
      configMap:
        name: {{ .job }}
    {{- end }}
  {{- with (include "tuneloop.nodeSelector" (dict "ctx" $ctx "gpu" $gpu "nodeSelector" .group.nodeSelector) | trim) }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with (include "tuneloop.tolerations" (dict "ctx" $ctx "gpu" $gpu "tolerations" .group.tolerations) | trim) }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with .group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* `ray start` parameters as KubeRay wants them: a map of strings, as one JSON line. */}}
{{- define "tuneloop.ray.startParams" -}}
{{- $params := dict }}
{{- range $key, $value := . }}
{{- $_ := set $params $key (toString $value) }}
{{- end }}
{{- toJson $params }}
{{- end }}
