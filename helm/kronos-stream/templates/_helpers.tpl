{{/* Names and labels. */}}
{{- define "kronos-stream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kronos-stream.fullname" -}}
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

{{- define "kronos-stream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels; call with (dict "root" $ "component" "daemon"). */}}
{{- define "kronos-stream.labels" -}}
helm.sh/chart: {{ include "kronos-stream.chart" .root }}
{{ include "kronos-stream.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: kronos-stream
{{- end }}

{{- define "kronos-stream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kronos-stream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kronos-stream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kronos-stream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kronos-stream.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- printf "%s:%s-%s" .Values.image.repository $tag .Values.image.variant }}
{{- end }}

{{/* GPU requests need the CUDA image (the schema says so too; this message is for old helm). */}}
{{- define "kronos-stream.checkGpu" -}}
{{- if and (gt (int .gpu) 0) (ne .root.Values.image.variant "cuda") }}
{{- fail (printf "%s.gpu is %d but image.variant is %q: GPU pods need the CUDA image (image.variant: cuda)" .what (int .gpu) .root.Values.image.variant) }}
{{- end }}
{{- end }}

{{/*
Flatten a config map into KRONOS_* variables, into the dict .out.
(dict "prefix" "KRONOS_" "config" $map "out" $env "nested" true "what" "daemon.config")
A nested map (only where "nested" is true) is a settings group: GROUP__FIELD. null values are left
out; strings are kept as they are, anything else is passed as JSON (numbers, booleans, lists).
A name already in .out (set by the chart itself) is refused.
*/}}
{{- define "kronos-stream.flattenConfig" -}}
{{- $ctx := . -}}
{{- range $key, $value := .config }}
{{- if kindIs "map" $value }}
{{- if not $ctx.nested }}
{{- fail (printf "%s.%s: a map is not a setting here (flat keys only)" $ctx.what $key) }}
{{- end }}
{{- range $field, $v := $value }}
{{- if not (kindIs "invalid" $v) }}
{{- include "kronos-stream.setEnv" (dict "out" $ctx.out "name" (printf "%s%s__%s" $ctx.prefix (upper $key) (upper $field)) "value" $v "what" (printf "%s.%s.%s" $ctx.what $key $field)) }}
{{- end }}
{{- end }}
{{- else if not (kindIs "invalid" $value) }}
{{- include "kronos-stream.setEnv" (dict "out" $ctx.out "name" (printf "%s%s" $ctx.prefix (upper $key)) "value" $value "what" (printf "%s.%s" $ctx.what $key)) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kronos-stream.setEnv" -}}
{{- if hasKey .out .name }}
{{- fail (printf "%s: %s is set by the chart from other values; remove it from the config map" .what .name) }}
{{- end }}
{{- if kindIs "string" .value }}
{{- $_ := set .out .name .value }}
{{- else }}
{{- $_ := set .out .name (toJson .value) }}
{{- end }}
{{- end }}

{{/* Registry and archive locations (local paths on the PVC, or object-store URLs). */}}
{{- define "kronos-stream.registryUrl" -}}
{{- if eq .Values.storage.type "pvc" }}
{{- printf "%s/%s" .Values.storage.pvc.mountPath .Values.storage.pvc.registryDir }}
{{- else }}
{{- required "storage.objectStore.registryUrl is required with storage.type objectStore" .Values.storage.objectStore.registryUrl }}
{{- end }}
{{- end }}

{{- define "kronos-stream.archiveUrl" -}}
{{- if eq .Values.storage.type "pvc" }}
{{- printf "%s/%s" .Values.storage.pvc.mountPath .Values.storage.pvc.archiveDir }}
{{- else }}
{{- required "storage.objectStore.archiveUrl is required with storage.type objectStore" .Values.storage.objectStore.archiveUrl }}
{{- end }}
{{- end }}

{{- define "kronos-stream.claimName" -}}
{{- if .Values.storage.pvc.create }}
{{- printf "%s-data" (include "kronos-stream.fullname" .) }}
{{- else }}
{{- required "storage.pvc.existingClaim is required when storage.pvc.create is false" .Values.storage.pvc.existingClaim }}
{{- end }}
{{- end }}

{{/* Volumes every pod has: /tmp, and the shared data volume with a PVC. */}}
{{- define "kronos-stream.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmpSizeLimit }}
{{- if and .kafka .root.Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .root.Values.kafka.tls.caSecret }}
{{- end }}
{{- if and .redis .root.Values.redis.tls.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ .root.Values.redis.tls.caSecret }}
{{- end }}
{{- if and (eq (default "" .signing) "public") .root.Values.signing.publicKeySecret }}
- name: signing-public
  secret:
    secretName: {{ .root.Values.signing.publicKeySecret }}
    items:
      - key: {{ .root.Values.signing.publicKeyKey }}
        path: {{ .root.Values.signing.publicKeyKey }}
{{- end }}
{{- if and (eq (default "" .signing) "private") .root.Values.signing.privateKeySecret }}
- name: signing-private
  secret:
    secretName: {{ .root.Values.signing.privateKeySecret }}
    defaultMode: 0400
    items:
      - key: {{ .root.Values.signing.privateKeyKey }}
        path: {{ .root.Values.signing.privateKeyKey }}
{{- end }}
{{- if eq .root.Values.storage.type "pvc" }}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "kronos-stream.claimName" .root }}
    {{- if .readOnly }}
    readOnly: true
    {{- end }}
{{- end }}
{{- end }}

{{- define "kronos-stream.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if and .kafka .root.Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/kronos/kafka-ca
  readOnly: true
{{- end }}
{{- if and .redis .root.Values.redis.tls.caSecret }}
- name: redis-ca
  mountPath: /etc/kronos/redis-ca
  readOnly: true
{{- end }}
{{- if and (eq (default "" .signing) "public") .root.Values.signing.publicKeySecret }}
- name: signing-public
  mountPath: /etc/kronos/signing-public
  readOnly: true
{{- end }}
{{- if and (eq (default "" .signing) "private") .root.Values.signing.privateKeySecret }}
- name: signing-private
  mountPath: /etc/kronos/signing-private
  readOnly: true
{{- end }}
{{- if eq .root.Values.storage.type "pvc" }}
- name: data
  mountPath: {{ .root.Values.storage.pvc.mountPath }}
  {{- if .readOnly }}
  readOnly: true
  {{- end }}
{{- end }}
{{- end }}

{{/* envFrom: the component's ConfigMap, and the object-store credentials Secret (every key of it
becomes an environment variable). Call with (dict "root" $ "configMap" NAME). */}}
{{- define "kronos-stream.envFrom" -}}
- configMapRef:
    name: {{ .configMap }}
{{- if and (eq .root.Values.storage.type "objectStore") .root.Values.storage.objectStore.existingSecret }}
- secretRef:
    name: {{ .root.Values.storage.objectStore.existingSecret }}
{{- end }}
{{- end }}

{{- define "kronos-stream.redisPasswordEnv" -}}
{{- if .Values.redis.existingSecret }}
- name: KRONOS_REDIS__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.passwordKey }}
{{- end }}
{{- end }}

{{- define "kronos-stream.saslPasswordEnv" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}
- name: KRONOS_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required with a SASL_* securityProtocol" .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- end }}

{{/* Scheduling fields shared by the workloads; call with the component's values. */}}
{{- define "kronos-stream.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* resources, with nvidia.com/gpu added to requests and limits when gpu > 0. */}}
{{- define "kronos-stream.resources" -}}
{{- $res := deepCopy (default dict .resources) }}
{{- if gt (int .gpu) 0 }}
{{- $limits := default dict $res.limits }}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpu) }}
{{- $_ := set $res "limits" $limits }}
{{- $requests := default dict $res.requests }}
{{- $_ := set $requests "nvidia.com/gpu" (int .gpu) }}
{{- $_ := set $res "requests" $requests }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* Maximum daemons: the static count, or the autoscaler's ceiling; never above the partitions. */}}
{{- define "kronos-stream.checkReplicas" -}}
{{- $parts := int .Values.kafka.partitions }}
{{- if eq .Values.autoscaling.mode "none" }}
{{- if gt (int .Values.daemon.replicas) $parts }}
{{- fail (printf "daemon.replicas (%d) exceeds kafka.partitions (%d): the extra consumers would own no partition" (int .Values.daemon.replicas) $parts) }}
{{- end }}
{{- else }}
{{- if gt (int .Values.autoscaling.maxReplicas) $parts }}
{{- fail (printf "autoscaling.maxReplicas (%d) exceeds kafka.partitions (%d): the extra consumers would own no partition" (int .Values.autoscaling.maxReplicas) $parts) }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) exceeds autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The retrain job's hint URL: redis.url with the publisher's user and the password variable of the
pod spliced in (rediss://user:$(REDIS_PASSWORD)@host...), and the mounted CA as ssl_ca_certs. */}}
{{- define "kronos-stream.hintRedisUrl" -}}
{{- $r := .Values.redis }}
{{- $parts := regexSplit "://" $r.url 2 }}
{{- if ne (len $parts) 2 }}
{{- fail (printf "redis.url %q has no scheme (e.g. redis://redis:6379/0)" $r.url) }}
{{- end }}
{{- $user := default $r.username $r.publisher.username }}
{{- $url := index $parts 1 }}
{{- if include "kronos-stream.publisherSecret" . }}
{{- $url = printf "%s:$(REDIS_PASSWORD)@%s" $user $url }}
{{- else if $user }}
{{- $url = printf "%s@%s" $user $url }}
{{- end }}
{{- if $r.tls.caSecret }}
{{- $url = printf "%s%sssl_ca_certs=/etc/kronos/redis-ca/%s" $url (ternary "&" "?" (contains "?" $url)) $r.tls.caKey }}
{{- end }}
{{- printf "%s://%s" (index $parts 0) $url }}
{{- end }}

{{- define "kronos-stream.publisherSecret" -}}
{{- default .Values.redis.existingSecret .Values.redis.publisher.existingSecret }}
{{- end }}

{{/* Pod-level env of the daemon: downward API and Secret references (never in the ConfigMap). */}}
{{- define "kronos-stream.daemonPodEnv" -}}
{{- if eq .Values.daemon.kind "StatefulSet" }}
# Static group membership: the stable pod name (<release>-N) is the instance id, so a restarted
# pod takes its partitions back without a rebalance.
- name: KRONOS_KAFKA__GROUP_INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- include "kronos-stream.saslPasswordEnv" . }}
{{- include "kronos-stream.redisPasswordEnv" . }}
{{- with .Values.daemon.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kronos-stream.archiverPodEnv" -}}
{{- include "kronos-stream.saslPasswordEnv" . }}
{{- with .Values.archiver.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kronos-stream.retrainPodEnv" -}}
{{- $secret := include "kronos-stream.publisherSecret" . }}
{{- if $secret }}
# The registry hint goes to Redis; its password is spliced into the URL here.
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ ternary .Values.redis.publisher.passwordKey .Values.redis.passwordKey (ne .Values.redis.publisher.existingSecret "") }}
- name: KRONOS_TRAIN__REDIS_URL
  value: {{ include "kronos-stream.hintRedisUrl" . | quote }}
{{- end }}
{{- with .Values.retrain.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The labels of an alert: its severity and metrics.prometheusRule.alertLabels;
(dict "severity" .severity "extra" $alertLabels). */}}
{{- define "kronos-stream.alertLabels" -}}
{{- toYaml (merge (dict "severity" .severity) (.extra | default dict)) }}
{{- end }}
