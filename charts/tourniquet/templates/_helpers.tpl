{{/* Names, labels and the operator's RBAC rules. */}}

{{- define "tourniquet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tourniquet.fullname" -}}
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

{{- define "tourniquet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tourniquet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tourniquet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tourniquet.labels" -}}
helm.sh/chart: {{ include "tourniquet.chart" . }}
{{ include "tourniquet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tourniquet
{{- end -}}

{{- define "tourniquet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tourniquet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tourniquet.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* "true" when several replicas elect the active one through Kopf peering. */}}
{{- define "tourniquet.peering" -}}
{{- if gt (int .Values.replicas) 1 -}}true{{- end -}}
{{- end -}}

{{/* "true" when the operator serves every namespace (no watchNamespaces list). */}}
{{- define "tourniquet.clusterwide" -}}
{{- if not .Values.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/*
The operator's RBAC, in three parts. tests/chart/test_rbac.py derives the API calls the code makes
(every KubeApi call, its resource and subresource) plus what Kopf needs for the registered handlers,
and fails if these rules miss one or grant one that nothing uses.

"tourniquet.rules.namespaced": rules on namespaced objects. In a ClusterRole when the operator serves
every namespace, otherwise in a Role in each watched namespace.
*/}}
{{- define "tourniquet.rules.namespaced" -}}
# Its own resources. Kopf watches them (list, watch) and keeps its finalizer and progress annotations on
# AgentDeployments (patch); the operator keeps its own finalizer on open AgentIncidents (patch); the
# reconcilers read them (get) and write their status.
- apiGroups: [tourniquet.dev]
  resources: [agentdeployments, agentincidents]
  verbs: [get, list, watch, patch]
- apiGroups: [tourniquet.dev]
  resources: [agentdeployments/status, agentincidents/status]
  verbs: [patch]
# Detection (rules and the Alertmanager receiver) opens incidents, under deterministic names.
- apiGroups: [tourniquet.dev]
  resources: [agentincidents]
  verbs: [create]
# The bundle, control and evidence ConfigMaps and the egress NetworkPolicy are created with a
# controller ownerReference (blockOwnerDeletion): clusters enforcing OwnerReferencesPermissionEnforcement
# require update on the owner's finalizers subresource for that.
# A drill's incident is owned the same way by its AgentDrill.
- apiGroups: [tourniquet.dev]
  resources: [agentdeployments/finalizers, agentincidents/finalizers, agentdrills/finalizers]
  verbs: [update]
# Bundle revisions (immutable, pruned past revisionHistoryLimit), the control ConfigMap (shadow mode,
# revoked tools; watched, so containment plans on the copy the watch holds) and the incident evidence.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
# Evidence: the agent's pods, their logs and the recent events; drain counts the pods left.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# One Event per timeline entry (and Kopf's own); the evidence reads the recent ones.
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
# The consumers: wired to the active bundle, drained to 0 replicas and restored.
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  verbs: [get, patch]
# Tool revocation: the agent's egress NetworkPolicy (watched, as the control ConfigMap).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch]
# Undo: the ledger URL of each agent, from the Secret its spec.ledger names (only the Secrets listed in
# ledger.secretNames).
# ledger.secretNames, and ledger.defaultSecret's name: the Secret of every agent whose spec.ledger is empty.
{{- $ledgerSecrets := .Values.ledger.secretNames | default list }}
{{- with .Values.ledger.defaultSecret }}{{ if .name }}{{ $ledgerSecrets = append $ledgerSecrets .name }}{{ end }}{{ end }}
{{- with $ledgerSecrets | uniq | sortAlpha }}
- apiGroups: [""]
  resources: [secrets]
  resourceNames: {{ toJson . }}
  verbs: [get]
{{- end }}
# Jobs: the compensation Job of an approved plan, and the redeploy gate's evaluation Job of a candidate
# revision (each created under a deterministic name and read back; Kopf watches them to notice an
# evaluation finish or go away).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create]
# Regression cases: the gate gives an agent's cases to its evaluation Job (list); Kopf watches them to keep
# their Accepted condition (does the agent they name exist) in their status.
- apiGroups: [tourniquet.dev]
  resources: [agentregressioncases]
  verbs: [list, watch]
- apiGroups: [tourniquet.dev]
  resources: [agentregressioncases/status]
  verbs: [patch]
# Drills: one Kopf daemon per AgentDrill (list, watch, and patch for Kopf's own bookkeeping); a run reads
# its drill fresh (get) and records its result in the status. Its incident is an AgentIncident (above).
- apiGroups: [tourniquet.dev]
  resources: [agentdrills]
  verbs: [get, list, watch, patch]
- apiGroups: [tourniquet.dev]
  resources: [agentdrills/status]
  verbs: [patch]
# Drain pauses the KEDA ScaledObject that drives a consumer (nothing happens without KEDA).
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [list, patch]
{{- end -}}

{{/*
"tourniquet.rules.cluster": cluster-scoped objects, always in a ClusterRole.
*/}}
{{- define "tourniquet.rules.cluster" -}}
# Kopf notices CRDs that appear or change (its resource observer).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if not (include "tourniquet.clusterwide" .) }}
# Serving a list of namespaces, Kopf watches them come and go.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
# The Alertmanager receiver finds the agent of an alert that has no namespace label among the watched
# namespaces; run as `kopf run` (which does not tell the operator its namespaces), by listing the
# AgentDeployments of every namespace.
- apiGroups: [tourniquet.dev]
  resources: [agentdeployments]
  verbs: [list]
{{- end }}
{{- end -}}

{{/*
"tourniquet.rules.peering": Kopf peering (replicas > 1). Every replica watches the peering objects and
patches its keep-alive record into the one named peering.name.
*/}}
{{- define "tourniquet.rules.peering" -}}
{{- $resource := ternary "clusterkopfpeerings" "kopfpeerings" (eq (include "tourniquet.clusterwide" .) "true") -}}
- apiGroups: [kopf.dev]
  resources: [{{ $resource }}]
  verbs: [list, watch]
- apiGroups: [kopf.dev]
  resources: [{{ $resource }}]
  resourceNames: [{{ .Values.peering.name | quote }}]
  verbs: [patch]
{{- end -}}
