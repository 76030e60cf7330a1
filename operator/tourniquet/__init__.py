"""Tourniquet: incident response for AI-agent workloads on Kubernetes."""

__version__ = "0.1.0"

GROUP = "tourniquet.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
