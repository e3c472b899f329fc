{{/*
Names. The edge objects are named after the chart's full name; the NATS
objects after the release: <release>-nats, <release>-nats-headless, pods
<release>-nats-0..N-1 (truncated so that every derived name fits 63 characters).
*/}}
{{- define "jetsock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jetsock.fullname" -}}
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

{{- define "jetsock.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jetsock.natsName" -}}
{{- printf "%s-nats" (.Release.Name | trunc 44 | trimSuffix "-") }}
{{- end }}

{{- define "jetsock.natsHeadless" -}}
{{- printf "%s-headless" (include "jetsock.natsName" .) }}
{{- end }}

{{- define "jetsock.labels" -}}
helm.sh/chart: {{ include "jetsock.chart" . }}
app.kubernetes.io/name: {{ include "jetsock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jetsock
{{- end }}

{{/* The edge's labels and selector. */}}
{{- define "jetsock.edgeLabels" -}}
{{ include "jetsock.labels" . }}
app.kubernetes.io/component: edge
{{- end }}

{{- define "jetsock.edgeSelectorLabels" -}}
app.kubernetes.io/name: {{ include "jetsock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: edge
{{- end }}

{{/* NATS's labels and selector. */}}
{{- define "jetsock.natsLabels" -}}
helm.sh/chart: {{ include "jetsock.chart" . }}
app.kubernetes.io/name: nats
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.nats.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jetsock
app.kubernetes.io/component: nats
{{- end }}

{{- define "jetsock.natsSelectorLabels" -}}
app.kubernetes.io/name: nats
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: nats
{{- end }}

{{- define "jetsock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jetsock.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "jetsock.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "jetsock.secretName" -}}
{{- include "jetsock.fullname" . }}
{{- end }}

{{/*
The edge's NATS servers: every pod of the chart's StatefulSet through the
headless Service, or nats.url.
*/}}
{{- define "jetsock.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- $name := include "jetsock.natsName" . }}
{{- $headless := include "jetsock.natsHeadless" . }}
{{- $urls := list }}
{{- range $i := until (int .Values.nats.replicas) }}
{{- $urls = append $urls (printf "nats://%s-%d.%s:4222" $name $i $headless) }}
{{- end }}
{{- join "," $urls }}
{{- else }}
{{- required "nats.url is required when nats.enabled=false" .Values.nats.url }}
{{- end }}
{{- end }}

{{/* The stream's name, as the edges create it (JETSOCK_STREAM). */}}
{{- define "jetsock.stream" -}}
{{- get .Values.config "stream" | default "ROOMS" }}
{{- end }}

{{/*
JETSOCK_REPLICAS: config.replicas when given, else nats.replicas with the
chart's NATS, else unset (the setting's default, 1).
*/}}
{{- define "jetsock.streamReplicas" -}}
{{- if hasKey .Values.config "replicas" }}
{{- include "jetsock.envValue" (get .Values.config "replicas") }}
{{- else if .Values.nats.enabled }}
{{- include "jetsock.envValue" .Values.nats.replicas }}
{{- end }}
{{- end }}

{{/*
A value as a JETSOCK_* variable's text. Helm reads every number as a float,
so whole numbers are printed without exponent or decimals (1048576, not
1.048576e+06), and booleans as true/false.
*/}}
{{- define "jetsock.envValue" -}}
{{- $v := . }}
{{- if kindIs "bool" $v }}
{{- ternary "true" "false" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) }}
{{- if eq (float64 $v) (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else }}
{{- $v }}
{{- end }}
{{- end }}

{{/* Whether the chart generates the HS256 key: no key source was given. */}}
{{- define "jetsock.generateJwtSecret" -}}
{{- $a := .Values.auth }}
{{- if not (or $a.jwtSecret $a.jwtPublicKey $a.jwksUrl $a.existingSecret) }}true{{ end }}
{{- end }}

{{/*
Whether the edges log in to NATS: always with the chart's NATS when its auth
is on; with an existing NATS when a password or an existing Secret is given.
*/}}
{{- define "jetsock.natsCredentials" -}}
{{- $a := .Values.nats.auth }}
{{- if .Values.nats.enabled }}
{{- if $a.enabled }}true{{ end }}
{{- else if or $a.password $a.existingSecret }}true{{ end }}
{{- end }}

{{/*
A value for the chart's Secret: the given one, else the one the release's
Secret already holds (so upgrades keep generated keys), else a new random one.
*/}}
{{- define "jetsock.secretValue" -}}
{{- $ctx := index . 0 }}
{{- $key := index . 1 }}
{{- $given := index . 2 }}
{{- if $given }}
{{- $given }}
{{- else }}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace (include "jetsock.secretName" $ctx) }}
{{- $old := dig "data" $key "" ($existing | default dict) }}
{{- if $old }}{{ b64dec $old }}{{ else }}{{ randAlphaNum 48 }}{{ end }}
{{- end }}
{{- end }}

{{/*
A Deployment's or StatefulSet's topologySpreadConstraints from
{spread: <values>, selector: <selector labels text>}.
*/}}
{{- define "jetsock.topologySpread" -}}
{{- $selector := .selector }}
{{- range $key := .spread.topologyKeys }}
- maxSkew: {{ $.spread.maxSkew }}
  topologyKey: {{ $key }}
  whenUnsatisfiable: {{ $.spread.whenUnsatisfiable }}
  labelSelector:
    matchLabels:
      {{- $selector | nindent 6 }}
  {{- if $.matchLabelKeys }}
  matchLabelKeys:
    {{- toYaml $.matchLabelKeys | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The edge's variables from Secrets (token keys, NATS password) and extraEnv. */}}
{{- define "jetsock.edgeSecretEnv" -}}
{{- if .Values.auth.existingSecret }}
- name: JETSOCK_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.existingSecret }}
      key: {{ .Values.auth.existingSecretKeys.jwtSecret }}
      optional: true
- name: JETSOCK_JWT_PUBLIC_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.existingSecret }}
      key: {{ .Values.auth.existingSecretKeys.jwtPublicKey }}
      optional: true
{{- else }}
{{- if or .Values.auth.jwtSecret (include "jetsock.generateJwtSecret" .) }}
- name: JETSOCK_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "jetsock.secretName" . }}
      key: jwt-secret
{{- end }}
{{- if .Values.auth.jwtPublicKey }}
- name: JETSOCK_JWT_PUBLIC_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "jetsock.secretName" . }}
      key: jwt-public-key
{{- end }}
{{- end }}
{{- if include "jetsock.natsCredentials" . }}
- name: JETSOCK_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- if .Values.nats.auth.existingSecret }}
      name: {{ .Values.nats.auth.existingSecret }}
      key: {{ .Values.nats.auth.existingSecretKeys.password }}
      {{- else }}
      name: {{ include "jetsock.secretName" . }}
      key: nats-password
      {{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
