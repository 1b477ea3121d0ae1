{{- define "ferrolb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ferrolb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "ferrolb.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ferrolb.labels" -}}
app.kubernetes.io/name: {{ include "ferrolb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ferrolb.selector" -}}
app.kubernetes.io/name: {{ include "ferrolb.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ferrolb.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ferrolb.controller" -}}{{ include "ferrolb.fullname" . }}-controller{{- end -}}
{{- define "ferrolb.speaker" -}}{{ include "ferrolb.fullname" . }}-speaker{{- end -}}
{{- define "ferrolb.gossipSecret" -}}{{ .Values.speaker.gossip.existingSecret | default (printf "%s-gossip" (include "ferrolb.fullname" .)) }}{{- end -}}

{{- define "ferrolb.commonEnv" -}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: FERROLB_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: FERROLB_LOAD_BALANCER_CLASS
  value: {{ .Values.loadBalancerClass | quote }}
- name: FERROLB_METRICS_AUTH
  value: {{ .Values.metrics.auth | quote }}
{{- if .Values.ignoreUnsetClass }}
- name: FERROLB_IGNORE_UNSET_CLASS
  value: "true"
{{- end }}
{{- if .Values.poolSelector }}
- name: FERROLB_POOL_SELECTOR
  value: {{ .Values.poolSelector | quote }}
{{- end }}
{{- end -}}
