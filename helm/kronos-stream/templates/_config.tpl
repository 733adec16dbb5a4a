{{/*
The KRONOS_* variables of each component, as a YAML map (the ConfigMaps' data). The chart sets the
connection, port, shutdown and storage variables from the values; the component's config map adds
the rest. Secrets never appear here: they are secretKeyRef entries of the pods (see _helpers.tpl).
*/}}

{{- define "kronos-stream.kafkaEnv" -}}
{{- $k := .Values.kafka }}
{{- $env := dict
  "KRONOS_KAFKA__BOOTSTRAP_SERVERS" $k.bootstrapServers
  "KRONOS_KAFKA__INPUT_TOPIC" $k.inputTopic
  "KRONOS_KAFKA__SECURITY_PROTOCOL" $k.securityProtocol }}
{{- if hasPrefix "SASL_" $k.securityProtocol }}
{{- $_ := set $env "KRONOS_KAFKA__SASL_MECHANISM" (required "kafka.sasl.mechanism is required with a SASL_* securityProtocol" $k.sasl.mechanism) }}
{{- $_ := set $env "KRONOS_KAFKA__SASL_USERNAME" (required "kafka.sasl.username is required with a SASL_* securityProtocol" $k.sasl.username) }}
{{- end }}
{{- if $k.tls.caSecret }}
{{- $_ := set $env "KRONOS_KAFKA__SSL_CAFILE" (printf "/etc/kronos/kafka-ca/%s" $k.tls.caKey) }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{- define "kronos-stream.daemonEnv" -}}
{{- $v := .Values }}
{{- $env := include "kronos-stream.kafkaEnv" . | fromYaml }}
{{- $_ := set $env "KRONOS_KAFKA__OUTPUT_TOPIC" $v.kafka.outputTopic }}
{{- $_ := set $env "KRONOS_KAFKA__DEAD_LETTER_TOPIC" $v.kafka.deadLetterTopic }}
{{- $_ := set $env "KRONOS_KAFKA__COMPRESSION_TYPE" $v.kafka.compressionType }}
{{- $_ := set $env "KRONOS_KAFKA__GROUP_ID" $v.kafka.groupId }}
{{- $_ := set $env "KRONOS_REDIS__URL" $v.redis.url }}
{{- $_ := set $env "KRONOS_REDIS__KEY_PREFIX" $v.redis.keyPrefix }}
{{- if $v.redis.username }}
{{- $_ := set $env "KRONOS_REDIS__USERNAME" $v.redis.username }}
{{- end }}
{{- if $v.redis.tls.caSecret }}
{{- $_ := set $env "KRONOS_REDIS__SSL_CA_CERTS" (printf "/etc/kronos/redis-ca/%s" $v.redis.tls.caKey) }}
{{- end }}
{{- if $v.signing.publicKeySecret }}
{{- $_ := set $env "KRONOS_MODEL__REGISTRY_PUBLIC_KEY" (printf "/etc/kronos/signing-public/%s" $v.signing.publicKeyKey) }}
{{- end }}
{{- $_ := set $env "KRONOS_HTTP_PORT" (toString (int $v.daemon.port)) }}
{{- $_ := set $env "KRONOS_GRACEFUL_SHUTDOWN_S" (toJson $v.daemon.gracefulShutdownSeconds) }}
{{- if $v.api.enabled }}
{{- if eq (int $v.api.port) (int $v.daemon.port) }}
{{- fail "api.port must differ from daemon.port: the API and the ops endpoints listen apart" }}
{{- end }}
{{- $_ := set $env "KRONOS_API__PORT" (toString (int $v.api.port)) }}
{{- $_ := set $env "KRONOS_API__AUTH" $v.api.auth }}
{{- $_ := set $env "KRONOS_API__RATE_PER_S" (toJson $v.api.ratePerSecond) }}
{{- $_ := set $env "KRONOS_API__BURST" (toString (int $v.api.burst)) }}
{{- if eq $v.api.auth "keys" }}
{{- if not $v.api.keys.existingSecret }}
{{- fail "api.keys.existingSecret is required with api.enabled and api.auth keys: a Secret holding the hashed keys file (lines from `kronos-stream api-key new NAME`), or set api.auth none" }}
{{- end }}
{{- $_ := set $env "KRONOS_API__KEYS_FILE" (printf "/etc/kronos/api-keys/%s" $v.api.keys.key) }}
{{- end }}
{{- end }}
{{- if eq $v.daemon.modelSource "registry" }}
{{- $_ := set $env "KRONOS_MODEL__REGISTRY" (include "kronos-stream.registryUrl" .) }}
{{- else }}
{{- $_ := set $env "KRONOS_MODEL__TOKENIZER_DIR" (required "daemon.model.tokenizerDir is required with daemon.modelSource dirs" $v.daemon.model.tokenizerDir) }}
{{- $_ := set $env "KRONOS_MODEL__PREDICTOR_DIR" (required "daemon.model.predictorDir is required with daemon.modelSource dirs" $v.daemon.model.predictorDir) }}
{{- end }}
{{- if eq $v.daemon.kind "StatefulSet" }}
{{- /* reserved: the pod's own name, from the downward API (see daemon.yaml) */}}
{{- $_ := set $env "KRONOS_KAFKA__GROUP_INSTANCE_ID" "" }}
{{- end }}
{{- include "kronos-stream.flattenConfig" (dict "prefix" "KRONOS_" "config" $v.daemon.config "out" $env "nested" true "what" "daemon.config") }}
{{- $_ := unset $env "KRONOS_KAFKA__GROUP_INSTANCE_ID" }}
{{- toYaml $env }}
{{- end }}

{{- define "kronos-stream.archiverEnv" -}}
{{- $v := .Values }}
{{- $env := include "kronos-stream.kafkaEnv" . | fromYaml }}
{{- $_ := set $env "KRONOS_ARCHIVE__ROOT" (include "kronos-stream.archiveUrl" .) }}
{{- include "kronos-stream.flattenConfig" (dict "prefix" "KRONOS_ARCHIVE__" "config" $v.archiver.config "out" $env "nested" false "what" "archiver.config") }}
{{- toYaml $env }}
{{- end }}

{{- define "kronos-stream.retrainEnv" -}}
{{- $v := .Values }}
{{- $env := dict
  "KRONOS_TRAIN__ARCHIVE" (include "kronos-stream.archiveUrl" .)
  "KRONOS_TRAIN__REGISTRY" (include "kronos-stream.registryUrl" .)
  "KRONOS_TRAIN__KEY_PREFIX" $v.redis.keyPrefix }}
{{- if eq $v.storage.type "pvc" }}
{{- $_ := set $env "KRONOS_TRAIN__WORK_DIR" (printf "%s/%s" $v.storage.pvc.mountPath $v.storage.pvc.trainWorkDir) }}
{{- else }}
{{- /* /tmp is an emptyDir: it survives the container restarts of restartPolicy OnFailure */}}
{{- $_ := set $env "KRONOS_TRAIN__WORK_DIR" "/tmp/train-work" }}
{{- end }}
{{- if $v.signing.privateKeySecret }}
{{- $_ := set $env "KRONOS_TRAIN__SIGNING_KEY" (printf "/etc/kronos/signing-private/%s" $v.signing.privateKeyKey) }}
{{- end }}
{{- if not (include "kronos-stream.publisherSecret" .) }}
{{- $_ := set $env "KRONOS_TRAIN__REDIS_URL" (include "kronos-stream.hintRedisUrl" .) }}
{{- else }}
{{- /* reserved: built in the pod from the password Secret (see retrain-cronjob.yaml) */}}
{{- $_ := set $env "KRONOS_TRAIN__REDIS_URL" "" }}
{{- end }}
{{- include "kronos-stream.flattenConfig" (dict "prefix" "KRONOS_TRAIN__" "config" $v.retrain.config "out" $env "nested" false "what" "retrain.config") }}
{{- if include "kronos-stream.publisherSecret" . }}
{{- $_ := unset $env "KRONOS_TRAIN__REDIS_URL" }}
{{- end }}
{{- toYaml $env }}
{{- end }}
