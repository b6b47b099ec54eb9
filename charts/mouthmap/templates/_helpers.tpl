{{/* Names ------------------------------------------------------------------------------- */}}
{{- define "mouthmap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mouthmap.fullname" -}}
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

{{- define "mouthmap.triton" -}}{{ include "mouthmap.fullname" . | trunc 56 | trimSuffix "-" }}-triton{{- end }}
{{- define "mouthmap.proxy" -}}{{ include "mouthmap.fullname" . | trunc 57 | trimSuffix "-" }}-proxy{{- end }}
{{- define "mouthmap.drift" -}}{{ include "mouthmap.fullname" . | trunc 52 | trimSuffix "-" }}-drift{{- end }}

{{- define "mouthmap.labels" -}}
app.kubernetes.io/name: {{ include "mouthmap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "mouthmap.commonLabels" . }}
{{- end }}

{{/* Labels without name/instance: for pod templates, which add the selector labels. */}}
{{- define "mouthmap.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mouthmap
{{- end }}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "triton") */}}
{{- define "mouthmap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mouthmap.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mouthmap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mouthmap.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the tag defaults to appVersion. */}}
{{- define "mouthmap.image" -}}
{{- $img := .image -}}
{{- if $img.digest -}}
{{ $img.repository }}@{{ $img.digest }}
{{- else -}}
{{ $img.repository }}:{{ $img.tag | default .ctx.Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* Environment every MouthMap container shares: S3 and MLflow endpoints, credential files.
     Secrets are mounted as files (never copied into env values). */}}
{{- define "mouthmap.env" -}}
- name: HOME
  value: /home/mouthmap
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
{{- with .Values.s3.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- if .Values.s3.existingSecret }}
- name: AWS_SHARED_CREDENTIALS_FILE
  value: /var/run/secrets/mouthmap/s3/{{ .Values.s3.credentialsKey }}
{{- end }}
- name: MLFLOW_TRACKING_URI
  value: {{ .Values.mlflow.trackingUri | quote }}
{{- end }}

{{- define "mouthmap.secretVolumes" -}}
{{- if .Values.s3.existingSecret }}
- name: s3-credentials
  secret:
    secretName: {{ .Values.s3.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.s3.credentialsKey }}
        path: {{ .Values.s3.credentialsKey }}
{{- end }}
{{- if .Values.mlflow.existingSecret }}
- name: mlflow-credentials
  secret:
    secretName: {{ .Values.mlflow.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.mlflow.credentialsKey }}
        path: credentials
{{- end }}
- name: home
  emptyDir:
    sizeLimit: 64Mi
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end }}

{{- define "mouthmap.secretMounts" -}}
{{- if .Values.s3.existingSecret }}
- name: s3-credentials
  mountPath: /var/run/secrets/mouthmap/s3
  readOnly: true
{{- end }}
- name: home
  mountPath: /home/mouthmap
{{- if .Values.mlflow.existingSecret }}
- name: mlflow-credentials
  mountPath: /home/mouthmap/.mlflow
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "mouthmap.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "mouthmap.securityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}
