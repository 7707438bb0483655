{{/*
Names.
*/}}
{{- define "realtime.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "realtime.fullname" -}}
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

{{/* Component names; "-gateway-admin" is the longest suffix (14), so the prefix is cut to 49. */}}
{{- define "realtime.gateway.fullname" -}}
{{- printf "%s-gateway" (include "realtime.fullname" . | trunc 49 | trimSuffix "-") -}}
{{- end -}}
{{- define "realtime.worker.fullname" -}}
{{- printf "%s-worker" (include "realtime.fullname" . | trunc 49 | trimSuffix "-") -}}
{{- end -}}
{{- define "realtime.secretName" -}}
{{- include "realtime.fullname" . -}}
{{- end -}}

{{- define "realtime.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "realtime.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "realtime.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Labels. "realtime.labels" takes (dict "root" $ "component" "gateway"|"worker"|"").
*/}}
{{- define "realtime.selectorLabels" -}}
app.kubernetes.io/name: {{ include "realtime.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "realtime.labels" -}}
helm.sh/chart: {{ include "realtime.chart" .root }}
{{ include "realtime.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: realtime
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Image reference. Takes (dict "root" $ "image" .Values.gateway.image).
*/}}
{{- define "realtime.image" -}}
{{- $repo := .image.repository -}}
{{- with .root.Values.image.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/*
An environment value as a string: booleans as true/false, whole numbers without exponent
(Helm reads YAML numbers as float64, and toString would give "8.388608e+06").
*/}}
{{- define "realtime.str" -}}
{{- $v := . -}}
{{- if kindIs "float64" $v -}}
{{- if eq (float64 (int64 $v)) $v -}}{{- int64 $v -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else if kindIs "invalid" $v -}}
{{- else -}}
{{- toString $v -}}
{{- end -}}
{{- end -}}

{{/*
Drain timing of the gateway, in seconds.
*/}}
{{- define "realtime.gateway.terminationGracePeriodSeconds" -}}
{{- $d := .Values.gateway.drain -}}
{{- if kindIs "invalid" .Values.gateway.terminationGracePeriodSeconds -}}
{{- add (int64 $d.delaySeconds) (int64 $d.spreadSeconds) (int64 $d.marginSeconds) -}}
{{- else -}}
{{- int64 .Values.gateway.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{- define "realtime.gateway.shutdownTimeoutSeconds" -}}
{{- $d := .Values.gateway.drain -}}
{{- if kindIs "invalid" $d.shutdownTimeoutSeconds -}}
{{- $grace := include "realtime.gateway.terminationGracePeriodSeconds" . | int64 -}}
{{- min (add (int64 $d.delaySeconds) (int64 $d.spreadSeconds) 5) (sub $grace 1) -}}
{{- else -}}
{{- int64 $d.shutdownTimeoutSeconds -}}
{{- end -}}
{{- end -}}

{{/*
Configuration checks that the schema cannot express.
*/}}
{{- define "realtime.validate" -}}
{{- $d := .Values.gateway.drain -}}
{{- $grace := include "realtime.gateway.terminationGracePeriodSeconds" . | int64 -}}
{{- $shutdown := include "realtime.gateway.shutdownTimeoutSeconds" . | int64 -}}
{{- $drain := add (int64 $d.delaySeconds) (int64 $d.spreadSeconds) -}}
{{- if le $grace $drain -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must be larger than drain.delaySeconds + drain.spreadSeconds (%d), or the kubelet kills gateways before their sockets are drained" $grace $drain) -}}
{{- end -}}
{{- if ge $shutdown $grace -}}
{{- fail (printf "gateway.drain.shutdownTimeoutSeconds (%d) must be below the termination grace period (%d s)" $shutdown $grace) -}}
{{- end -}}
{{- if lt $shutdown $drain -}}
{{- fail (printf "gateway.drain.shutdownTimeoutSeconds (%d) must be at least drain.delaySeconds + drain.spreadSeconds (%d)" $shutdown $drain) -}}
{{- end -}}
{{- if and (eq .Values.redis.mode "sentinel") (not .Values.redis.sentinelMaster) -}}
{{- fail "redis.sentinelMaster is required with redis.mode=sentinel (the master name the sentinels monitor)" -}}
{{- end -}}
{{- if and (eq .Values.redis.mode "single") (contains "," .Values.redis.url) -}}
{{- fail "redis.url lists several servers: set redis.mode to cluster or sentinel" -}}
{{- end -}}
{{- if and (not .Values.redis.url) (not (and .Values.redis.existingSecret .Values.redis.urlKey)) -}}
{{- fail "set redis.url, or redis.existingSecret with redis.urlKey" -}}
{{- end -}}
{{- if eq .Values.gateway.websockets.rest.path .Values.gateway.websockets.graphql.path -}}
{{- fail "gateway.websockets.graphql.path must differ from gateway.websockets.rest.path" -}}
{{- end -}}
{{- if and .Values.gateway.autoscaling.enabled (kindIs "invalid" .Values.gateway.autoscaling.targetCPUUtilizationPercentage) (kindIs "invalid" .Values.gateway.autoscaling.targetMemoryUtilizationPercentage) -}}
{{- fail "gateway.autoscaling needs targetCPUUtilizationPercentage and/or targetMemoryUtilizationPercentage" -}}
{{- end -}}
{{- if and .Values.gateway.autoscaling.enabled (gt (int64 .Values.gateway.autoscaling.minReplicas) (int64 .Values.gateway.autoscaling.maxReplicas)) -}}
{{- fail "gateway.autoscaling.minReplicas must not exceed maxReplicas" -}}
{{- end -}}
{{- end -}}

{{/*
Public URL: publicUrl, else derived from the first ingress host.
*/}}
{{- define "realtime.publicUrl" -}}
{{- if .Values.publicUrl -}}
{{- .Values.publicUrl -}}
{{- else if and .Values.gateway.ingress.enabled .Values.gateway.ingress.hosts -}}
{{- $host := first .Values.gateway.ingress.hosts -}}
{{- printf "%s://%s" (ternary "https" "http" (gt (len .Values.gateway.ingress.tls) 0)) $host -}}
{{- end -}}
{{- end -}}

{{/*
Secret-backed environment. Secret items: each is taken from the domain's existingSecret when that is set and
the item's key is not empty, otherwise from the chart's Secret when the value is set, otherwise not at all.

"realtime.secretItems" returns a YAML list of {env, chartKey, value, existingSecret, existingKey} for a
component ("gateway" or "worker"); the Secret template and the Deployments both read it, so they agree.
*/}}
{{- define "realtime.secretItems" -}}
{{- $v := .root.Values -}}
{{- $items := list -}}
{{- if eq .component "gateway" -}}
{{- $items = append $items (dict "env" "SECRET" "chartKey" "SECRET" "value" ($v.auth.secret | default "") "existingSecret" $v.auth.existingSecret "existingKey" $v.auth.secretKey "generate" true) -}}
{{- $items = append $items (dict "env" "ADMIN_PASSWORD" "chartKey" "ADMIN_PASSWORD" "value" ($v.admin.password | default "") "existingSecret" $v.admin.existingSecret "existingKey" $v.admin.passwordKey) -}}
{{- $items = append $items (dict "env" "ADMIN_TOKEN" "chartKey" "ADMIN_TOKEN" "value" ($v.admin.token | default "") "existingSecret" $v.admin.existingSecret "existingKey" $v.admin.tokenKey) -}}
{{- end -}}
{{- $w := $v.worker.database -}}
{{- $workerDb := and (eq .component "worker") (or $w.user $w.connectionString (and $w.existingSecret $w.connectionStringKey)) -}}
{{- if $workerDb -}}
{{- $items = append $items (dict "env" "DB_PASSWORD" "chartKey" "WORKER_DB_PASSWORD" "value" ($w.password | default "") "existingSecret" $w.existingSecret "existingKey" $w.passwordKey) -}}
{{- $items = append $items (dict "env" "DB_CONNECTION_STRING" "chartKey" "WORKER_DB_CONNECTION_STRING" "value" ($w.connectionString | default "") "existingSecret" $w.existingSecret "existingKey" $w.connectionStringKey) -}}
{{- else -}}
{{- $items = append $items (dict "env" "DB_PASSWORD" "chartKey" "DB_PASSWORD" "value" ($v.database.password | default "") "existingSecret" $v.database.existingSecret "existingKey" $v.database.passwordKey) -}}
{{- $items = append $items (dict "env" "DB_CONNECTION_STRING" "chartKey" "DB_CONNECTION_STRING" "value" ($v.database.connectionString | default "") "existingSecret" $v.database.existingSecret "existingKey" $v.database.connectionStringKey) -}}
{{- end -}}
{{- $items = append $items (dict "env" "REDIS" "chartKey" "REDIS" "value" ($v.redis.url | default "") "existingSecret" $v.redis.existingSecret "existingKey" $v.redis.urlKey) -}}
{{- $items = append $items (dict "env" "REDIS_PASSWORD" "chartKey" "REDIS_PASSWORD" "value" ($v.redis.password | default "") "existingSecret" $v.redis.existingSecret "existingKey" $v.redis.passwordKey) -}}
{{- $items = append $items (dict "env" "REDIS_SENTINEL_PASSWORD" "chartKey" "REDIS_SENTINEL_PASSWORD" "value" ($v.redis.sentinelPassword | default "") "existingSecret" $v.redis.existingSecret "existingKey" $v.redis.sentinelPasswordKey) -}}
{{- toYaml (dict "items" $items) -}}
{{- end -}}

{{/* env entries for a component's secret items. Takes (dict "root" $ "component" "gateway"|"worker"). */}}
{{- define "realtime.secretEnv" -}}
{{- $root := .root -}}
{{- range (include "realtime.secretItems" . | fromYaml).items }}
{{- if and .existingSecret .existingKey }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .existingKey | quote }}
{{- else if or .value .generate }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "realtime.secretName" $root }}
      key: {{ .chartKey }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod anti-affinity preset or the given affinity. Takes (dict "root" $ "component" "gateway" "values" .Values.gateway). */}}
{{- define "realtime.affinity" -}}
{{- if .values.affinity -}}
{{- toYaml .values.affinity -}}
{{- else if eq .values.podAntiAffinity "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: {{ .values.podAntiAffinityTopologyKey }}
        labelSelector:
          matchLabels:
            {{- include "realtime.selectorLabels" . | nindent 12 }}
{{- else if eq .values.podAntiAffinity "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: {{ .values.podAntiAffinityTopologyKey }}
      labelSelector:
        matchLabels:
          {{- include "realtime.selectorLabels" . | nindent 10 }}
{{- end -}}
{{- end -}}

{{/* topologySpreadConstraints with the component's selector filled in where missing. */}}
{{- define "realtime.topologySpread" -}}
{{- $sel := include "realtime.selectorLabels" . | fromYaml -}}
{{- $out := list -}}
{{- range .values.topologySpreadConstraints -}}
{{- $c := deepCopy . -}}
{{- if not (hasKey $c "labelSelector") -}}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $sel) -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- if $out -}}
{{- toYaml $out -}}
{{- end -}}
{{- end -}}

{{/* An HTTP probe. Takes (dict "probe" .Values.gateway.livenessProbe "path" "/healthz" "port" "admin"). */}}
{{- define "realtime.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
initialDelaySeconds: {{ .probe.initialDelaySeconds | int64 }}
periodSeconds: {{ .probe.periodSeconds | int64 }}
timeoutSeconds: {{ .probe.timeoutSeconds | int64 }}
failureThreshold: {{ .probe.failureThreshold | int64 }}
successThreshold: {{ .probe.successThreshold | int64 }}
{{- end -}}

{{/* Label matchers for the alert expressions. */}}
{{- define "realtime.seriesSelector" -}}
{{- if .Values.prometheusRule.seriesSelector -}}
{{- .Values.prometheusRule.seriesSelector -}}
{{- else -}}
{{- printf "namespace=%q, job=~%q" .Release.Namespace (printf "%s|%s-admin|%s" (include "realtime.gateway.fullname" .) (include "realtime.gateway.fullname" .) (include "realtime.worker.fullname" .)) -}}
{{- end -}}
{{- end -}}

{{/*
Environment of a component as a flat map of strings (the ConfigMap's data). Entries whose value is null or ""
are left out; extraConfig (common, then per component) overrides chart-managed entries.
Takes (dict "root" $ "component" "gateway"|"worker").
*/}}
{{- define "realtime.config" -}}
{{- $root := .root -}}
{{- $v := .root.Values -}}
{{- $gw := $v.gateway -}}
{{- $wk := $v.worker -}}
{{- $e := dict -}}
{{- $_ := set $e "HOST" $v.listenAddress -}}
{{- $_ = set $e "DB_CLIENT" "pg" -}}
{{- $_ = set $e "DB_HOST" $v.database.host -}}
{{- $_ = set $e "DB_PORT" $v.database.port -}}
{{- $_ = set $e "DB_DATABASE" $v.database.database -}}
{{- $_ = set $e "DB_USER" $v.database.user -}}
{{- $_ = set $e "DB_SEARCH_PATH" $v.database.searchPath -}}
{{- $_ = set $e "REDIS_MODE" $v.redis.mode -}}
{{- $_ = set $e "REDIS_USERNAME" $v.redis.username -}}
{{- if eq $v.redis.mode "sentinel" -}}
{{- $_ = set $e "REDIS_SENTINEL_MASTER" $v.redis.sentinelMaster -}}
{{- $_ = set $e "REDIS_SENTINEL_USERNAME" $v.redis.sentinelUsername -}}
{{- end -}}
{{- $_ = set $e "REALTIME_REDIS_PREFIX" $v.redis.prefix -}}
{{- $_ = set $e "REALTIME_SHARDS" $v.shards -}}
{{- $_ = set $e "LOG_LEVEL" $v.log.level -}}
{{- $_ = set $e "LOG_STYLE" $v.log.style -}}
{{- $_ = set $e "METRICS_ENABLED" $v.metrics.enabled -}}
{{- if $v.otel.endpoint -}}
{{- $_ = set $e "OTEL_EXPORTER_OTLP_ENDPOINT" $v.otel.endpoint -}}
{{- $_ = set $e "OTEL_TRACES_SAMPLER" $v.otel.tracesSampler -}}
{{- $_ = set $e "OTEL_TRACES_SAMPLER_ARG" $v.otel.tracesSamplerArg -}}
{{- $_ = set $e "OTEL_SERVICE_NAME" (ternary $v.otel.gatewayServiceName $v.otel.workerServiceName (eq .component "gateway")) -}}
{{- end -}}
{{- if eq .component "gateway" -}}
{{- $_ = set $e "PORT" $gw.port -}}
{{- $_ = set $e "REALTIME_ADMIN_PORT" $gw.adminPort -}}
{{- $_ = set $e "PUBLIC_URL" (include "realtime.publicUrl" $root) -}}
{{- $_ = set $e "REALTIME_DB_POOL_SIZE" $gw.dbPoolSize -}}
{{- $_ = set $e "ACCESS_TOKEN_TTL" $v.auth.accessTokenTTL -}}
{{- $_ = set $e "REFRESH_TOKEN_TTL" $v.auth.refreshTokenTTL -}}
{{- $_ = set $e "LOGIN_STALL_TIME" $v.auth.loginStallTime -}}
{{- $_ = set $e "ADMIN_EMAIL" $v.admin.email -}}
{{- with $gw.websockets -}}
{{- $_ = set $e "WEBSOCKETS_ENABLED" .enabled -}}
{{- $_ = set $e "WEBSOCKETS_REST_ENABLED" .rest.enabled -}}
{{- $_ = set $e "WEBSOCKETS_REST_PATH" .rest.path -}}
{{- $_ = set $e "WEBSOCKETS_REST_AUTH" .rest.auth -}}
{{- $_ = set $e "WEBSOCKETS_REST_AUTH_TIMEOUT" .rest.authTimeout -}}
{{- $_ = set $e "WEBSOCKETS_REST_CONN_LIMIT" .rest.connLimit -}}
{{- $_ = set $e "WEBSOCKETS_GRAPHQL_ENABLED" .graphql.enabled -}}
{{- $_ = set $e "WEBSOCKETS_GRAPHQL_PATH" .graphql.path -}}
{{- $_ = set $e "WEBSOCKETS_GRAPHQL_AUTH" .graphql.auth -}}
{{- $_ = set $e "WEBSOCKETS_GRAPHQL_AUTH_TIMEOUT" .graphql.authTimeout -}}
{{- $_ = set $e "WEBSOCKETS_GRAPHQL_CONN_LIMIT" .graphql.connLimit -}}
{{- $_ = set $e "WEBSOCKETS_HEARTBEAT_ENABLED" .heartbeat.enabled -}}
{{- $_ = set $e "WEBSOCKETS_HEARTBEAT_PERIOD" .heartbeat.period -}}
{{- end -}}
{{- $_ = set $e "RATE_LIMITER_ENABLED" $gw.rateLimiter.enabled -}}
{{- $_ = set $e "RATE_LIMITER_POINTS" $gw.rateLimiter.points -}}
{{- $_ = set $e "RATE_LIMITER_DURATION" $gw.rateLimiter.duration -}}
{{- $_ = set $e "REALTIME_SEND_BUFFER_BYTES" $gw.sendBufferBytes -}}
{{- $_ = set $e "REALTIME_MAX_SUBSCRIPTIONS_PER_CONNECTION" $gw.maxSubscriptionsPerConnection -}}
{{- $_ = set $e "REALTIME_MAX_MESSAGE_BYTES" $gw.maxMessageBytes -}}
{{- $_ = set $e "REALTIME_DRAIN_DELAY" (printf "%ds" (int64 $gw.drain.delaySeconds)) -}}
{{- $_ = set $e "REALTIME_DRAIN_SPREAD" (printf "%ds" (int64 $gw.drain.spreadSeconds)) -}}
{{- $_ = set $e "REALTIME_SHUTDOWN_TIMEOUT" (printf "%ss" (include "realtime.gateway.shutdownTimeoutSeconds" $root)) -}}
{{- range $k, $val := $v.extraConfig }}{{ $_ = set $e $k $val }}{{ end -}}
{{- range $k, $val := $gw.extraConfig }}{{ $_ = set $e $k $val }}{{ end -}}
{{- else -}}
{{- $_ = set $e "PORT" $wk.port -}}
{{- with $wk.database.user }}{{ $_ = set $e "DB_USER" . }}{{ end -}}
{{- $_ = set $e "REALTIME_CAPTURE_ENABLED" $wk.capture.enabled -}}
{{- $_ = set $e "REALTIME_SLOT" $wk.capture.slot -}}
{{- $_ = set $e "REALTIME_PUBLICATION" $wk.capture.publication -}}
{{- $_ = set $e "REALTIME_REPLICA_IDENTITY_FULL" $wk.capture.replicaIdentityFull -}}
{{- $_ = set $e "REALTIME_CAPTURE_EXCLUDE" $wk.capture.exclude -}}
{{- $_ = set $e "REALTIME_STREAM_MAXLEN" $wk.stream.maxLen -}}
{{- $_ = set $e "REALTIME_STREAM_MAX_AGE" $wk.stream.maxAge -}}
{{- $_ = set $e "REALTIME_SHARD_LEASE" $wk.shardLease -}}
{{- range $k, $val := $v.extraConfig }}{{ $_ = set $e $k $val }}{{ end -}}
{{- range $k, $val := $wk.extraConfig }}{{ $_ = set $e $k $val }}{{ end -}}
{{- end -}}
{{- $out := dict -}}
{{- range $k, $val := $e -}}
{{- $s := include "realtime.str" $val -}}
{{- if ne $s "" }}{{ $_ = set $out $k $s }}{{ end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* OTEL_RESOURCE_ATTRIBUTES: pod identity from the downward API (POD_NAME/POD_NAMESPACE come first in env). */}}
{{- define "realtime.otelResourceAttributes" -}}
{{- $a := list "k8s.namespace.name=$(POD_NAMESPACE)" "k8s.pod.name=$(POD_NAME)" "service.instance.id=$(POD_NAME)" -}}
{{- with .Values.otel.resourceAttributes -}}
{{- $a = append $a . -}}
{{- end -}}
{{- join "," $a -}}
{{- end -}}
