{{/* Chart name, truncated to the 63 characters a label value may have. */}}
{{- define "policybind.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name. Kept to 50 characters so suffixes such as
"-webhook-tls" still fit a 63-character name.
*/}}
{{- define "policybind.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "policybind.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "policybind.labels" -}}
helm.sh/chart: {{ include "policybind.chart" . }}
app.kubernetes.io/name: {{ include "policybind.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: policybind
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component; pass (dict "ctx" $ "component" "webhook"). */}}
{{- define "policybind.selectorLabels" -}}
app.kubernetes.io/name: {{ include "policybind.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image reference; a digest wins over a tag. */}}
{{- define "policybind.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "policybind.sidecarImage" -}}
{{- default (include "policybind.image" .) .Values.sidecar.image }}
{{- end }}

{{- define "policybind.operatorName" -}}
{{- printf "%s-operator" (include "policybind.fullname" .) }}
{{- end }}

{{- define "policybind.checkName" -}}
{{- printf "%s-check" (include "policybind.fullname" .) }}
{{- end }}

{{- define "policybind.webhookName" -}}
{{- printf "%s-webhook" (include "policybind.fullname" .) }}
{{- end }}

{{- define "policybind.webhookTlsSecret" -}}
{{- default (printf "%s-webhook-tls" (include "policybind.fullname" .)) .Values.webhook.certificate.secretName }}
{{- end }}

{{/*
Audit signing key Secrets, one per writer: the one given in
audit.signingKey.existingSecrets, or the one the chart generates. Each is
mounted into its own Deployment only.
*/}}
{{- define "policybind.operatorAuditKeySecret" -}}
{{- default (printf "%s-operator-key" (include "policybind.fullname" .)) .Values.audit.signingKey.existingSecrets.operator }}
{{- end }}

{{- define "policybind.webhookAuditKeySecret" -}}
{{- default (printf "%s-webhook-key" (include "policybind.fullname" .)) .Values.audit.signingKey.existingSecrets.webhook }}
{{- end }}

{{- define "policybind.operatorAuditKeyEnabled" -}}
{{- if or .Values.audit.signingKey.create .Values.audit.signingKey.existingSecrets.operator }}true{{ end }}
{{- end }}

{{- define "policybind.webhookAuditKeyEnabled" -}}
{{- if or .Values.audit.signingKey.create .Values.audit.signingKey.existingSecrets.webhook }}true{{ end }}
{{- end }}

{{/*
The ClusterRole of what sidecars write in an enforced namespace; the operator
binds it there (RoleBinding policybind-sidecar) and holds `bind` on it.
*/}}
{{- define "policybind.sidecarClusterRole" -}}
{{- printf "%s-sidecar" (include "policybind.fullname" .) }}
{{- end }}

{{/* The operator's and the webhook's service account user names. */}}
{{- define "policybind.operatorUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "policybind.operatorName" .) }}
{{- end }}

{{- define "policybind.webhookUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "policybind.webhookName" .) }}
{{- end }}

{{/* DNS name of the webhook Service, the name its certificate must carry. */}}
{{- define "policybind.webhookServiceDns" -}}
{{- printf "%s.%s.svc" (include "policybind.webhookName" .) .Release.Namespace }}
{{- end }}

{{/*
Namespaces the webhook never sees: kube-system, kube-public, the release
namespace (PolicyBind must be able to start while its webhook is down) and
webhook.excludeNamespaces. The same list the webhook's own registration uses
(webhook/src/configs.rs).
*/}}
{{- define "policybind.excludedNamespaces" -}}
- kube-system
- kube-public
- {{ .Release.Namespace }}
{{- range .Values.webhook.excludeNamespaces }}
- {{ . }}
{{- end }}
{{- end }}

{{/*
Client config of one webhook path; pass (dict "ctx" $ "path" "/validate"
"caBundle" <base64 CA in helm mode, else "">).
*/}}
{{- define "policybind.webhookClientConfig" -}}
service:
  name: {{ include "policybind.webhookName" .ctx }}
  namespace: {{ .ctx.Release.Namespace }}
  path: {{ .path }}
  port: 443
{{- if .caBundle }}
caBundle: {{ .caBundle }}
{{- else if eq .ctx.Values.webhook.certificate.mode "secret" }}
caBundle: {{ required "webhook.certificate.caBundle is required when webhook.certificate.mode is secret" .ctx.Values.webhook.certificate.caBundle }}
{{- end }}
{{- end }}

{{/* Annotations that let cert-manager's CA injector fill caBundle. */}}
{{- define "policybind.webhookConfigAnnotations" -}}
{{- if eq .Values.webhook.certificate.mode "cert-manager" }}
annotations:
  cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/{{ include "policybind.webhookName" . }}
{{- end }}
{{- end }}

{{- define "policybind.dashboardName" -}}
{{- printf "%s-dashboard" (include "policybind.fullname" .) }}
{{- end }}

{{/*
The budget store of enforcement points, `leases` or `redis`, checked:
Redis needs a URL without credentials, and a password Secret only reaches the
gateway (injected sidecars run in workload namespaces).
*/}}
{{- define "policybind.budgetStore" -}}
{{- $b := .Values.budgets -}}
{{- if eq $b.store "leases" -}}
leases
{{- else if eq $b.store "redis" -}}
{{- if not (or (hasPrefix "redis://" $b.redis.url) (hasPrefix "rediss://" $b.redis.url)) -}}
{{- fail "budgets.store=redis needs budgets.redis.url = redis://host:port[/db] or rediss://host:port[/db]" -}}
{{- end -}}
{{- if and $b.redis.ca.configMap (not (hasPrefix "rediss://" $b.redis.url)) -}}
{{- fail "budgets.redis.ca is for TLS: budgets.redis.url must be rediss://" -}}
{{- end -}}
{{- if and $b.redis.ca.configMap (not $b.redis.gatewayOnly) -}}
{{- fail "budgets.redis.ca reaches the gateway only; injected sidecars check the Redis certificate against the platform's roots: set budgets.redis.gatewayOnly=true, or give Redis a certificate from a public CA" -}}
{{- end -}}
{{- if contains "@" $b.redis.url -}}
{{- fail "budgets.redis.url must not carry credentials (they would show in pod specs): use budgets.redis.passwordSecret" -}}
{{- end -}}
{{- if and $b.redis.passwordSecret.name (not $b.redis.gatewayOnly) -}}
{{- fail "budgets.redis.passwordSecret reaches the gateway only; injected sidecars cannot be given it: set budgets.redis.gatewayOnly=true, or use a Redis without a password behind a NetworkPolicy" -}}
{{- end -}}
redis
{{- else -}}
{{- fail (printf "budgets.store must be leases or redis, not %q" $b.store) -}}
{{- end -}}
{{- end -}}
