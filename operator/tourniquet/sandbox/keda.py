"""A stand-in for KEDA's ScaledObject CRD, so the sandbox can run examples/keda-consumer.yaml whole.

Only the CRD: no KEDA controller runs in the sandbox (nothing scales by itself, as nothing runs pods).
What the operator relies on is there: the kind, its namespaced REST path, and annotations it can patch
(``autoscaling.keda.sh/paused-replicas``). The schema checks the one field the drain reads,
``spec.scaleTargetRef.name``, and keeps the rest of KEDA's spec as given.
"""

from __future__ import annotations

from typing import Any

SCALEDOBJECTS = "keda.sh/v1alpha1/scaledobjects"


def scaledobject_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "scaledobjects.keda.sh", "labels": {"app.kubernetes.io/part-of": "tourniquet-sandbox"}},
        "spec": {
            "group": "keda.sh",
            "names": {
                "kind": "ScaledObject",
                "listKind": "ScaledObjectList",
                "plural": "scaledobjects",
                "singular": "scaledobject",
                "shortNames": ["so"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "ScaleTargetName", "type": "string", "jsonPath": ".spec.scaleTargetRef.name"},
                        {"name": "Min", "type": "integer", "jsonPath": ".spec.minReplicaCount"},
                        {"name": "Max", "type": "integer", "jsonPath": ".spec.maxReplicaCount"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": {
                                    "type": "object",
                                    "required": ["scaleTargetRef"],
                                    "x-kubernetes-preserve-unknown-fields": True,
                                    "properties": {
                                        "scaleTargetRef": {
                                            "type": "object",
                                            "required": ["name"],
                                            "properties": {
                                                "apiVersion": {"type": "string"},
                                                "kind": {"type": "string"},
                                                "name": {"type": "string"},
                                                "envSourceContainerName": {"type": "string"},
                                            },
                                        },
                                        "minReplicaCount": {"type": "integer", "format": "int32"},
                                        "maxReplicaCount": {"type": "integer", "format": "int32"},
                                    },
                                },
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        }
                    },
                }
            ],
        },
    }
