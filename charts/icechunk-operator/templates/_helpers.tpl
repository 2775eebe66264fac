{{- define "icechunk-operator.labels" -}}
app.kubernetes.io/name: icechunk-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}

{{- define "icechunk-operator.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Namespaces that get the commit and worker service accounts. */}}
{{- define "icechunk-operator.workloadNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- toJson .Values.watchNamespaces -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/* The rules the operator's code uses, nothing more (k8s/kube.py and Kopf's own needs). */}}
{{- define "icechunk-operator.namespacedRules" -}}
- apiGroups: [icechunkoperator.io]
  resources: [icechunkstores, ingestschedules]
  verbs: [get, list, watch, patch]
- apiGroups: [icechunkoperator.io]
  resources: [reconciliations]
  verbs: [get, list, watch]
# create, delete: an IngestSchedule's runs, and the runs beyond its history limits. Never patch:
# a batch's spec is its author's (status is the subresource below).
- apiGroups: [icechunkoperator.io]
  resources: [ingestbatches]
  verbs: [get, list, watch, create, delete]
- apiGroups: [icechunkoperator.io]
  resources: [icechunkstores/status, ingestbatches/status, ingestschedules/status, reconciliations/status]
  verbs: [patch]
# Children carry blockOwnerDeletion; where OwnerReferencesPermissionEnforcement is on (OpenShift),
# setting it needs update on the owner's finalizers subresource (nothing else of the owner).
- apiGroups: [icechunkoperator.io]
  resources: [icechunkstores/finalizers, ingestbatches/finalizers, ingestschedules/finalizers, reconciliations/finalizers]
  verbs: [update]
# delete: finished reconcile and maintenance Jobs beyond historyLimit.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [kubernetes.dask.org]
  resources: [daskclusters]
  verbs: [create, delete]
# A store's writer Lease, held while a writer Job is started: two operators never start two.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end -}}
