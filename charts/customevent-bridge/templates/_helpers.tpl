{{/*
Names and labels.
*/}}
{{- define "customevent-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "customevent-bridge.fullname" -}}
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

{{- define "customevent-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "customevent-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "customevent-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "customevent-bridge.labels" -}}
helm.sh/chart: {{ include "customevent-bridge.chart" . }}
{{ include "customevent-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "customevent-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "customevent-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "customevent-bridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "customevent-bridge.configMapName" -}}
{{- printf "%s-config" (include "customevent-bridge.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "customevent-bridge.secretName" -}}
{{- .Values.existingSecret | default (include "customevent-bridge.fullname" .) }}
{{- end }}

{{/*
"true" when more than one pod may run at once; empty otherwise (templates test it with `if`).
*/}}
{{- define "customevent-bridge.multiReplica" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) (include "customevent-bridge.kedaScalesDaemon" .) }}true{{ end }}
{{- end }}

{{/* "true" when KEDA (not the chart's HPA, not replicaCount) owns the daemon's replica count. */}}
{{- define "customevent-bridge.kedaScalesDaemon" -}}
{{- if and .Values.keda.enabled (eq .Values.keda.target "daemon") }}true{{ end }}
{{- end }}

{{/*
The group consumer's pod labels: a name of their own, so that no selector of the daemon's
(Service, PodDisruptionBudget, NetworkPolicy) takes its pods for the daemon's.
*/}}
{{- define "customevent-bridge.groupConsumerSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-listen" (include "customevent-bridge.name" . | trunc 56 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: group-consumer
app.kubernetes.io/part-of: {{ include "customevent-bridge.name" . }}
{{- end }}

{{/* The group consumer Deployment's name. */}}
{{- define "customevent-bridge.groupConsumerName" -}}
{{- printf "%s-listen" (include "customevent-bridge.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/* The events exchange, as the effective config names it (the daemon's default otherwise). */}}
{{- define "customevent-bridge.exchange" -}}
{{- $amqp := (fromJson (include "customevent-bridge.effectiveConfig" .)).amqp | default dict }}
{{- $amqp.exchange | default "customevents" }}
{{- end }}

{{/* The effective config's RabbitMQ: "true" when an AMQP URL is set or may be in existingSecret. */}}
{{- define "customevent-bridge.hasAmqp" -}}
{{- $amqp := (fromJson (include "customevent-bridge.effectiveConfig" .)).amqp | default dict }}
{{- if or $amqp.url .Values.existingSecret (hasKey (.Values.secrets | default dict) "amqp__url") }}true{{ end }}
{{- end }}

{{/*
The two settings the pod spec shares with the config file: one value each, read here only.
Defaults match the daemon's own.
*/}}
{{- define "customevent-bridge.httpPort" -}}
{{- $http := .Values.config.http | default dict }}
{{- if kindIs "invalid" $http.port }}8280{{ else }}{{ int $http.port }}{{ end }}
{{- end }}

{{- define "customevent-bridge.drainSeconds" -}}
{{- $http := .Values.config.http | default dict }}
{{- if kindIs "invalid" $http.drain_seconds }}10{{ else }}{{ $http.drain_seconds }}{{ end }}
{{- end }}

{{/* The daemon drains for drain_seconds after SIGTERM; 5 s more covers the preStop sleep. */}}
{{- define "customevent-bridge.terminationGracePeriodSeconds" -}}
{{- add (ceil (include "customevent-bridge.drainSeconds" . | float64)) 5 }}
{{- end }}

{{/*
The RabbitmqCluster (RabbitMQ Cluster Operator) the bridge uses: its Secret's name, and
{"url": ...} without credentials, as JSON: one URL through the cluster's Service, or one per pod
through its headless Service <name>-nodes. Empty when rabbitmqCluster.name is not set.
*/}}
{{- define "customevent-bridge.rabbitmqClusterSecret" -}}
{{- with .Values.rabbitmqCluster }}{{ if .name }}{{ .secret | default (printf "%s-default-user" .name) }}{{ end }}{{ end }}
{{- end }}

{{- define "customevent-bridge.rabbitmqClusterAmqp" -}}
{{- $rmq := .Values.rabbitmqCluster | default dict }}
{{- if $rmq.name }}
{{- $tls := eq $rmq.tls true }}
{{- $scheme := ternary "amqps" "amqp" $tls }}
{{- $port := ternary 5671 5672 $tls }}
{{- $vhost := $rmq.vhost | default "/" | trimPrefix "/" }}
{{- $domain := printf "%s.svc" .Release.Namespace }}
{{- $urls := list }}
{{- range $i := until (int ($rmq.nodes | default 0)) }}
{{- $urls = append $urls (printf "%s://%s-server-%d.%s-nodes.%s:%d/%s" $scheme $rmq.name $i $rmq.name $domain $port $vhost) }}
{{- end }}
{{- if not $urls }}
{{- $urls = printf "%s://%s.%s:%d/%s" $scheme $rmq.name $domain $port $vhost }}
{{- end }}
{{- toJson (dict "url" $urls) }}
{{- end }}
{{- end }}

{{/*
The effective config as JSON: .Values.config plus what the chart owns (listen address, port and
drain from the helpers above, amqp.url for a rabbitmqCluster, the shared MQTT subscription group
when several pods run).
*/}}
{{- define "customevent-bridge.effectiveConfig" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $http := $config.http | default dict }}
{{- $_ := set $http "host" "0.0.0.0" }}
{{- $_ := set $http "port" (include "customevent-bridge.httpPort" . | int) }}
{{- $_ := set $http "drain_seconds" (include "customevent-bridge.drainSeconds" . | float64) }}
{{- $_ := set $config "http" $http }}
{{- with include "customevent-bridge.rabbitmqClusterAmqp" . }}
{{- $amqp := $config.amqp | default dict }}
{{- if or $amqp.url (hasKey ($.Values.secrets | default dict) "amqp__url") }}
{{- fail "rabbitmqCluster.name gives amqp.url: leave config.amqp.url and secrets.amqp__url unset" }}
{{- end }}
{{- $_ := set $amqp "url" (fromJson .).url }}
{{- $_ := set $config "amqp" $amqp }}
{{- end }}
{{- if include "customevent-bridge.multiReplica" . }}
{{- $amqp := $config.amqp | default dict }}
{{- if not (or $amqp.url .Values.existingSecret (hasKey (.Values.secrets | default dict) "amqp__url")) }}
{{- fail "more than one pod (replicaCount > 1 or autoscaling.enabled) needs RabbitMQ, as the in-process bus is per pod: set secrets.amqp__url, config.amqp.url, rabbitmqCluster.name, or existingSecret holding amqp__url" }}
{{- end }}
{{- /* The chart cannot see whether an existingSecret holds mqtt__url, so the group is always
       set here; the daemon ignores it while MQTT is off. */}}
{{- $mqtt := $config.mqtt | default dict }}
{{- if not $mqtt.shared_group }}
{{- $_ := set $mqtt "shared_group" (include "customevent-bridge.fullname" .) }}
{{- end }}
{{- $_ := set $config "mqtt" $mqtt }}
{{- end }}
{{- /* Triggers: their signing keys are files the deployment mounts from the referenced
       Secrets (customevent-bridge.triggerSecretDir). */}}
{{- if .Values.triggers }}
{{- $triggers := list }}
{{- range .Values.triggers }}
{{- $trigger := dict "name" .name "pattern" .pattern "url" .url "secret_file" (printf "%s/secret" (include "customevent-bridge.triggerSecretDir" .name)) }}
{{- if .kind }}{{ $_ := set $trigger "kind" .kind }}{{ end }}
{{- if .mode }}{{ $_ := set $trigger "mode" .mode }}{{ end }}
{{- if .timeout }}{{ $_ := set $trigger "timeout" .timeout }}{{ end }}
{{- if .maxAttempts }}{{ $_ := set $trigger "max_attempts" .maxAttempts }}{{ end }}
{{- if .maxInFlight }}{{ $_ := set $trigger "max_in_flight" .maxInFlight }}{{ end }}
{{- if .filters }}{{ $_ := set $trigger "filters" .filters }}{{ end }}
{{- $triggers = append $triggers $trigger }}
{{- end }}
{{- $_ := set $config "triggers" (concat ($config.triggers | default list) $triggers) }}
{{- end }}
{{- toJson $config }}
{{- end }}

{{/* Where the signing key of the trigger named . is mounted. */}}
{{- define "customevent-bridge.triggerSecretDir" -}}
/etc/customevent/triggers/{{ . }}
{{- end }}

{{/*
TOML rendering, written by hand (Helm has no toToml that keeps ints and key order stable).
Input: a dict of sections, each a dict of keys. Values: strings (quoted), bools, numbers (whole
numbers as integers), lists (arrays) and dicts (inline tables). Null values are left out: TOML has
no null and the daemon's default applies.
*/}}
{{- define "customevent-bridge.toml" -}}
{{- range $section, $body := . }}
{{- if kindIs "slice" $body }}
{{- /* An array of tables: [[triggers]] */}}
{{- range $body }}
[[{{ include "customevent-bridge.tomlKey" $section }}]]
{{- range $key, $value := . }}
{{- if not (kindIs "invalid" $value) }}
{{ include "customevent-bridge.tomlKey" $key }} = {{ include "customevent-bridge.tomlValue" $value }}
{{- end }}
{{- end }}
{{/* blank line between tables */}}
{{- end }}
{{- else }}
{{- if not (kindIs "map" $body) }}
{{- fail (printf "config.%s must be a table (section), not %s" $section (kindOf $body)) }}
{{- end }}
[{{ include "customevent-bridge.tomlKey" $section }}]
{{- range $key, $value := $body }}
{{- if not (kindIs "invalid" $value) }}
{{ include "customevent-bridge.tomlKey" $key }} = {{ include "customevent-bridge.tomlValue" $value }}
{{- end }}
{{- end }}
{{/* blank line between sections */}}
{{- end }}
{{- end }}
{{- end }}

{{- define "customevent-bridge.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ . | quote }}{{ end }}
{{- end }}

{{- define "customevent-bridge.tomlValue" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}{{ $v | quote }}
{{- else if kindIs "bool" $v }}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) }}
{{- if eq (float64 $v) (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) }}{{ $v }}
{{- else if kindIs "slice" $v }}[
{{- range $i, $item := $v }}{{ if $i }}, {{ end }}{{ include "customevent-bridge.tomlValue" $item }}{{ end -}}
]
{{- else if kindIs "map" $v }}{
{{- $first := true }}
{{- range $key, $item := $v }}
{{- if not (kindIs "invalid" $item) }}
{{- if $first }} {{ else }}, {{ end }}
{{- $first = false }}
{{- include "customevent-bridge.tomlKey" $key }} = {{ include "customevent-bridge.tomlValue" $item }}
{{- end }}
{{- end }} }
{{- else }}
{{- fail (printf "cannot write %v (%s) as TOML" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{/*
The settings every pod of the release reads: the ConfigMap's file and the Secret's files (the
daemon's and the group consumer's alike), as volumes, mounts and the environment naming them.
*/}}
{{- define "customevent-bridge.settingsVolumes" -}}
- name: config
  configMap:
    name: {{ include "customevent-bridge.configMapName" . }}
- name: secrets
  {{- with include "customevent-bridge.rabbitmqClusterSecret" . }}
  # The settings' Secret, plus the RabbitmqCluster's user and password as two more
  # settings files (amqp__username, amqp__password).
  projected:
    defaultMode: 288  # 0440: readable by the pod's fsGroup only
    sources:
      - secret:
          name: {{ include "customevent-bridge.secretName" $ }}
          optional: false
      - secret:
          name: {{ . }}
          optional: false
          items:
            - key: username
              path: amqp__username
            - key: password
              path: amqp__password
  {{- else }}
  # `optional` spelled out: the pod must not start without its settings (and podman
  # kube play 4.3 fails on a secret volume that leaves it out).
  secret:
    secretName: {{ include "customevent-bridge.secretName" . }}
    optional: false
    defaultMode: 288  # 0440: readable by the pod's fsGroup only
  {{- end }}
{{- end }}

{{- define "customevent-bridge.settingsMounts" -}}
- name: config
  mountPath: /etc/customevent
  readOnly: true
- name: secrets
  mountPath: /run/secrets/customevent
  readOnly: true
{{- end }}

{{- define "customevent-bridge.settingsEnv" -}}
- name: CUSTOMEVENT_CONFIG
  value: /etc/customevent/customevent.toml
- name: CUSTOMEVENT_SECRETS_DIR
  value: /run/secrets/customevent
{{- end }}
