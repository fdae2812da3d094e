{{/* Names, labels and computed settings shared by every template of the llmkeys chart. */}}

{{- define "llmkeys.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name prefix; trimmed so "<fullname>-operator" stays within 63 characters. */}}
{{- define "llmkeys.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "llmkeys.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmkeys.operator.fullname" -}}{{ include "llmkeys.fullname" . }}-operator{{- end -}}
{{- define "llmkeys.proxy.fullname" -}}{{ include "llmkeys.fullname" . }}-proxy{{- end -}}
{{- define "llmkeys.redis.fullname" -}}{{ include "llmkeys.fullname" . }}-redis{{- end -}}

{{/* Labels of every resource; pass a dict {"ctx": $, "component": "proxy"}. */}}
{{- define "llmkeys.labels" -}}
helm.sh/chart: {{ include "llmkeys.chart" .ctx }}
{{ include "llmkeys.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: llmkeys
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Immutable selector labels; pass a dict {"ctx": $, "component": "proxy"}. */}}
{{- define "llmkeys.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmkeys.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "llmkeys.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "llmkeys.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "llmkeys.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Lease the operator replicas elect their leader on (release namespace). */}}
{{- define "llmkeys.operator.leaseName" -}}
{{- default (include "llmkeys.operator.fullname" .) .Values.operator.leaderElection.leaseName -}}
{{- end -}}

{{- define "llmkeys.proxy.serviceAccountName" -}}
{{- if .Values.proxy.serviceAccount.create -}}
{{- default (include "llmkeys.proxy.fullname" .) .Values.proxy.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.proxy.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "external", "bundled" or "none": where the limit counters live. */}}
{{- define "llmkeys.redis.mode" -}}
{{- if or .Values.redis.external.url .Values.redis.external.urlSecret.name -}}
external
{{- else if .Values.redis.enabled -}}
bundled
{{- else -}}
none
{{- end -}}
{{- end -}}

{{- define "llmkeys.redis.passwordSecretName" -}}
{{- default (include "llmkeys.redis.fullname" .) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{- define "llmkeys.redis.caPath" -}}/etc/llmkeys/redis-ca/ca.crt{{- end -}}

{{/* Redis URL from settings; the URL from urlSecret is not known here (it is read at run time). */}}
{{- define "llmkeys.redis.url" -}}
{{- $mode := include "llmkeys.redis.mode" . -}}
{{- if eq $mode "bundled" -}}
{{- printf "redis://%s.%s.svc:6379/0" (include "llmkeys.redis.fullname" .) .Release.Namespace -}}
{{- else if eq $mode "external" -}}
{{- $url := .Values.redis.external.url -}}
{{- if .Values.redis.external.tls.caSecret.name -}}
{{- $sep := ternary "&" "?" (contains "?" $url) -}}
{{- $url = printf "%s%sssl_ca_certs=%s" $url $sep (include "llmkeys.redis.caPath" .) -}}
{{- end -}}
{{- $url -}}
{{- end -}}
{{- end -}}

{{/* Environment of both components for Redis: URL and optional password. */}}
{{- define "llmkeys.redis.env" -}}
{{- $mode := include "llmkeys.redis.mode" . -}}
{{- if and (eq $mode "external") .Values.redis.external.urlSecret.name }}
- name: LLMKEYS_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.urlSecret.name }}
      key: {{ .Values.redis.external.urlSecret.key }}
{{- else }}
- name: LLMKEYS_REDIS_URL
  value: {{ include "llmkeys.redis.url" . | quote }}
{{- end }}
{{- if and (eq $mode "external") .Values.redis.external.passwordSecret.name }}
- name: LLMKEYS_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.passwordSecret.name }}
      key: {{ .Values.redis.external.passwordSecret.key }}
{{- else if and (eq $mode "bundled") .Values.redis.auth.enabled }}
- name: LLMKEYS_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "llmkeys.redis.passwordSecretName" . }}
      key: redis-password
{{- end }}
{{- end -}}

{{/* Volume and mount of the external Redis CA bundle, when configured. */}}
{{- define "llmkeys.redis.caVolume" -}}
{{- if and (eq (include "llmkeys.redis.mode" .) "external") .Values.redis.external.tls.caSecret.name }}
- name: redis-ca
  secret:
    secretName: {{ .Values.redis.external.tls.caSecret.name }}
    items:
      - key: {{ .Values.redis.external.tls.caSecret.key }}
        path: ca.crt
{{- end }}
{{- end -}}

{{- define "llmkeys.redis.caMount" -}}
{{- if and (eq (include "llmkeys.redis.mode" .) "external") .Values.redis.external.tls.caSecret.name }}
- name: redis-ca
  mountPath: /etc/llmkeys/redis-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "llmkeys.proxy.url" -}}
{{- if .Values.operator.proxyURL -}}
{{- .Values.operator.proxyURL -}}
{{- else -}}
{{- printf "%s://%s.%s.svc:%d" (include "llmkeys.proxy.portName" .) (include "llmkeys.proxy.fullname" .) .Release.Namespace (int .Values.proxy.service.port) -}}
{{- end -}}
{{- end -}}

{{- /* The proxy port's name and URL scheme: https when the proxy terminates TLS itself (the name
tells meshes and ingress controllers what the port speaks). */ -}}
{{- define "llmkeys.proxy.metricsSecretName" -}}
{{- .Values.proxy.metrics.tokenSecret.name | default (printf "%s-metrics" (include "llmkeys.proxy.fullname" .)) -}}
{{- end -}}

{{- define "llmkeys.proxy.portName" -}}
{{- if .Values.proxy.tls.secretName }}https{{ else }}http{{ end -}}
{{- end -}}

{{/* Replicas the proxy runs at least: the HPA minimum when autoscaling, else replicas. */}}
{{- define "llmkeys.proxy.minReplicas" -}}
{{- if .Values.proxy.autoscaling.enabled -}}
{{- .Values.proxy.autoscaling.minReplicas -}}
{{- else -}}
{{- .Values.proxy.replicas -}}
{{- end -}}
{{- end -}}

{{/* Egress rules of the operator and proxy NetworkPolicies, when egress is restricted. */}}
{{- define "llmkeys.networkPolicy.egress" -}}
{{- if .Values.networkPolicy.egress }}
egress:
  # DNS, wherever the cluster resolver runs.
  - ports:
      - port: 53
        protocol: UDP
      - port: 53
        protocol: TCP
  {{- if eq (include "llmkeys.redis.mode" .) "bundled" }}
  - to:
      - podSelector:
          matchLabels:
            {{- include "llmkeys.selectorLabels" (dict "ctx" . "component" "redis") | nindent 12 }}
    ports:
      - port: 6379
        protocol: TCP
  {{- end }}
  {{- toYaml .Values.networkPolicy.egress | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The admission webhook's Service and certificate Secret (templates/webhook.yaml). */}}
{{- define "llmkeys.webhook.serviceName" -}}{{ include "llmkeys.fullname" . }}-webhook{{- end -}}
{{- define "llmkeys.webhook.secretName" -}}{{ include "llmkeys.fullname" . }}-webhook-tls{{- end -}}
{{- define "llmkeys.webhook.certDir" -}}/etc/llmkeys/webhook-tls{{- end -}}

{{/* The self-service portal (templates/portal*.yaml). */}}
{{- define "llmkeys.portal.fullname" -}}{{ include "llmkeys.fullname" . }}-portal{{- end -}}
{{- define "llmkeys.portal.serviceAccountName" -}}
{{- if .Values.portal.serviceAccount.create -}}
{{- default (include "llmkeys.portal.fullname" .) .Values.portal.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.portal.serviceAccount.name -}}
{{- end -}}
{{- end -}}
{{- define "llmkeys.portal.sessionSecretName" -}}
{{- .Values.portal.session.keySecret.name | default (printf "%s-session" (include "llmkeys.portal.fullname" .)) -}}
{{- end -}}
