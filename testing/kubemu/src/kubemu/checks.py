"""What a write must pass: metadata, names and labels, built-in defaults and checks, immutable data."""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from kubemu import crvalidate
from kubemu.crds import _Crds
from kubemu.errors import ApiError, _bad_request
from kubemu.resources import BUILTIN_SCALABLE, CRD_RESOURCE, NAMESPACES
from kubemu.selectors import LabelSelector

if TYPE_CHECKING:
    from kubemu.errors import JSON
    from kubemu.resources import ResourceSpec


OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)


SERVER_MANAGED_META = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
)


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


_DNS_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation "
    r"is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


_DNS_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)


_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex "
    "used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


def _default_pod_spec(pod_spec: Any) -> None:
    if not isinstance(pod_spec, dict):
        return
    pod_spec.setdefault("restartPolicy", "Always")
    pod_spec.setdefault("terminationGracePeriodSeconds", 30)
    pod_spec.setdefault("dnsPolicy", "ClusterFirst")
    pod_spec.setdefault("securityContext", {})
    pod_spec.setdefault("schedulerName", "default-scheduler")
    for field in ("containers", "initContainers"):
        for container in pod_spec.get(field) or ():
            if not isinstance(container, dict):
                continue
            image = str(container.get("image", ""))
            tag = image.rsplit("/", 1)[-1].partition("@")[0].partition(":")[2]
            floating = "@" not in image and tag in ("", "latest")
            container.setdefault("imagePullPolicy", "Always" if floating else "IfNotPresent")
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("resources", {})
            for port in container.get("ports") or ():
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")


def _default_template(spec: Any) -> None:
    if isinstance(spec, dict) and isinstance(spec.get("template"), dict):
        _default_pod_spec(spec["template"].get("spec"))


def apply_builtin_defaults(group: str, plural: str, obj: JSON) -> None:
    """Fill in the defaults a real API server gives the common built-in kinds (in place)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        spec = None
    match group, plural:
        case "apps", "deployments" if spec is not None:
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            strategy = spec.setdefault("strategy", {})
            if isinstance(strategy, dict):
                strategy.setdefault("type", "RollingUpdate")
                if strategy["type"] == "RollingUpdate":
                    rolling = strategy.setdefault("rollingUpdate", {})
                    if isinstance(rolling, dict):
                        rolling.setdefault("maxSurge", "25%")
                        rolling.setdefault("maxUnavailable", "25%")
            _default_template(spec)
        case "apps", "statefulsets" if spec is not None:
            spec.setdefault("replicas", 1)
            spec.setdefault("podManagementPolicy", "OrderedReady")
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
            spec.setdefault("persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
            _default_template(spec)
        case "apps", "replicasets" if spec is not None:
            spec.setdefault("replicas", 1)
            _default_template(spec)
        case "apps", "daemonsets" if spec is not None:
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault(
                "updateStrategy",
                {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            )
            _default_template(spec)
        case "batch", "jobs" if spec is not None:
            spec.setdefault("parallelism", 1)
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            _default_template(spec)
        case "", "pods" if spec is not None:
            _default_pod_spec(spec)
        case "", "services" if spec is not None:
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            for port in spec.get("ports") or ():
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")
                    if "port" in port:
                        port.setdefault("targetPort", port["port"])
        case "", "secrets":
            obj.setdefault("type", "Opaque")
            string_data = obj.pop("stringData", None)
            if isinstance(string_data, dict):
                data = obj.setdefault("data", {})
                for key, value in string_data.items():
                    data[key] = base64.b64encode(str(value).encode()).decode()
        case "networking.k8s.io", "networkpolicies" if spec is not None:
            if not spec.get("policyTypes"):
                spec["policyTypes"] = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
        case "", "namespaces":
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        case _:
            pass


_IMMUTABLE_FIELDS = {"configmaps": ("data", "binaryData"), "secrets": ("data",)}


def _immutable_errors(spec: ResourceSpec, obj: JSON, old: JSON | None) -> list[crvalidate.FieldError]:
    """A ConfigMap or Secret stored with ``immutable: true`` keeps its data and stays immutable (metadata may
    change, and it may be deleted), as the API server's update validation says."""
    fields = _IMMUTABLE_FIELDS.get(spec.plural) if spec.group == "" else None
    if not fields or old is None or old.get("immutable") is not True:
        return []
    changed = [] if obj.get("immutable") is True else ["immutable"]
    changed += [field for field in fields if (obj.get(field) or {}) != (old.get(field) or {})]
    return [crvalidate.FieldError(f, "Forbidden", detail="field is immutable when `immutable` is set") for f in changed]


@dataclasses.dataclass
class _WriteOptions:
    dry_run: bool = False
    field_validation: str = "Warn"  # Strict | Warn | Ignore
    warnings: list[str] = dataclasses.field(default_factory=list)
    manager: str = ""  # managedFields: '' for the emulator's own helpers (no entry is recorded)
    operation: str = "Update"  # Update | Apply
    subresource: str = ""  # set by a write through /scale
    applied: Any = None  # an apply's configuration

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> _WriteOptions:
        validation = params.get("fieldValidation") or "Warn"
        if validation not in ("Strict", "Warn", "Ignore"):
            raise _bad_request(f"fieldValidation must be one of Ignore, Warn, or Strict, got {validation!r}")
        return cls(dry_run=params.get("dryRun") == "All", field_validation=validation)


@attrs.define(kw_only=True)
class _Checks(_Crds):
    """The checks and defaults of a write."""

    def _check_namespace_open(self, spec: ResourceSpec, namespace: str | None, name: str) -> None:
        if not spec.namespaced:
            return
        ns = self._live(NAMESPACES, None, namespace or "")
        if ns is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        if (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f'{spec.qualified} "{name}" is forbidden: unable to create new content '
                f"in namespace {namespace} because it is being terminated",
                spec.details(name),
            )

    def _normalize_metadata(self, spec: ResourceSpec, obj: JSON, opts: _WriteOptions) -> list[crvalidate.FieldError]:
        """Check and clean ``metadata`` the way the API server does for every kind."""
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise _bad_request(
                f'{spec.kind} in version "{spec.version}" cannot be handled as a {spec.kind}: '
                "metadata must be an object"
            )
        unknown = [key for key in meta if key not in OBJECT_META_FIELDS]
        self._unknown_fields(spec, [f"metadata.{key}" for key in unknown], opts)
        for key in unknown:
            del meta[key]
        meta.pop("managedFields", None)
        meta.pop("selfLink", None)
        errors: list[crvalidate.FieldError] = []
        for field in ("labels", "annotations"):
            values = meta.get(field)
            if values is None:
                meta.pop(field, None)
                continue
            if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
                raise _bad_request(
                    f'{spec.kind} in version "{spec.version}" cannot be handled as a {spec.kind}: '
                    f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{field} "
                    "of type map[string]string"
                )
        for key, value in (meta.get("labels") or {}).items():
            errors.extend(self._label_errors(key, value))
        for index, ref in enumerate(meta.get("ownerReferences") or []):
            for field in ("apiVersion", "kind", "name", "uid"):
                if not isinstance(ref, dict) or not ref.get(field):
                    errors.append(crvalidate.FieldError(f"metadata.ownerReferences[{index}].{field}", "Required"))
        finalizers = meta.get("finalizers")
        if finalizers is not None and not (
            isinstance(finalizers, list) and all(isinstance(f, str) for f in finalizers)
        ):
            raise _bad_request("metadata.finalizers must be a list of strings")
        return errors

    @staticmethod
    def _label_errors(key: str, value: str) -> list[crvalidate.FieldError]:
        errors = []
        prefix, _, name = key.rpartition("/")
        if (
            (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)))
            or not name
            or len(name) > 63
            or not _LABEL_NAME.fullmatch(name)
        ):
            errors.append(
                crvalidate.FieldError(
                    "metadata.labels",
                    "Invalid",
                    key,
                    "name part must consist of alphanumeric characters, '-', '_' or '.', "
                    "and must start and end with an alphanumeric character",
                )
            )
        if len(value) > 63:
            errors.append(
                crvalidate.FieldError("metadata.labels", "Invalid", value, "must be no more than 63 characters")
            )
        elif not _LABEL_VALUE.fullmatch(value):
            errors.append(crvalidate.FieldError("metadata.labels", "Invalid", value, _LABEL_VALUE_MSG))
        return errors

    @staticmethod
    def _unknown_fields(spec: ResourceSpec, paths: list[str], opts: _WriteOptions) -> None:
        if not paths:
            return
        if opts.field_validation == "Strict":
            listed = ", ".join(f'unknown field "{path}"' for path in paths)
            raise _bad_request(
                f'{spec.kind} in version "{spec.version}" cannot be handled as a {spec.kind}: '
                f"strict decoding error: {listed}"
            )
        if opts.field_validation == "Warn":
            opts.warnings.extend(f'unknown field "{path}"' for path in paths)

    def _invalid(self, spec: ResourceSpec, name: str, errors: list[crvalidate.FieldError]) -> ApiError:
        text = ", ".join(str(e) for e in errors)
        text = text if len(errors) == 1 else f"[{text}]"
        details = spec.details(name, kind=spec.kind)
        details["causes"] = [{"reason": e.reason, "message": e.message, "field": e.path or "<nil>"} for e in errors]
        return ApiError(422, "Invalid", f'{spec.qualified_kind} "{name}" is invalid: {text}', details)

    def _finish(self, spec: ResourceSpec, obj: JSON, old: JSON | None, opts: _WriteOptions, name: str) -> JSON:
        """Defaulting, pruning and validation shared by create and update. Returns the object to store."""
        errors = self._normalize_metadata(spec, obj, opts)
        if self.builtin_defaults and not spec.custom:
            apply_builtin_defaults(spec.group, spec.plural, obj)
        if spec.validator is not None:
            obj, unknown = spec.validator.prepare(obj, old=old)
            self._unknown_fields(spec, unknown, opts)
            errors.extend(spec.validator.validate(obj, old=old))
        errors.extend(self._builtin_errors(spec, obj))
        errors.extend(_immutable_errors(spec, obj, old))
        if errors:
            raise self._invalid(spec, name, errors)
        return obj

    def _builtin_errors(self, spec: ResourceSpec, obj: JSON) -> list[crvalidate.FieldError]:
        errors: list[crvalidate.FieldError] = []
        if (spec.group, spec.plural) in BUILTIN_SCALABLE:
            replicas = (obj.get("spec") or {}).get("replicas")
            if replicas is not None and (not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0):
                errors.append(
                    crvalidate.FieldError("spec.replicas", "Invalid", replicas, "must be greater than or equal to 0")
                )
            if spec.group == "apps" and isinstance(obj.get("spec"), dict):
                selector = obj["spec"].get("selector")
                template_labels = ((obj["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
                if not selector:
                    errors.append(crvalidate.FieldError("spec.selector", "Required"))
                elif not LabelSelector.from_structured(selector).matches(template_labels):
                    errors.append(
                        crvalidate.FieldError(
                            "spec.template.metadata.labels",
                            "Invalid",
                            template_labels,
                            "`selector` does not match template `labels`",
                        )
                    )
        if spec.plural == "configmaps" and spec.group == "":
            for field in ("data", "binaryData"):
                values = obj.get(field)
                if values is not None and (
                    not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values())
                ):
                    raise _bad_request(
                        f'ConfigMap in version "v1" cannot be handled as a ConfigMap: '
                        f"json: cannot unmarshal into Go struct field ConfigMap.{field} "
                        "of type map[string]string"
                    )
        if spec.resource == CRD_RESOURCE:
            errors.extend(self._crd_errors(obj))
        return errors

    def _check_identity(self, spec: ResourceSpec, obj: Any) -> JSON:
        if not isinstance(obj, dict):
            raise _bad_request("the body of the request was in an unknown format - the object must be a JSON object")
        api_version = obj.get("apiVersion")
        if api_version not in (None, spec.api_version):
            raise _bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({spec.api_version})"
            )
        kind = obj.get("kind")
        if kind not in (None, spec.kind):
            raise _bad_request(f"the kind in the data ({kind}) does not match the expected kind ({spec.kind})")
        # Custom resources are stored in the CRD's storage version (and converted back when read).
        storage = spec.storage
        head = {
            "apiVersion": f"{storage.group}/{storage.version}" if storage.group else storage.version,
            "kind": spec.kind,
        }
        return {**head, **{key: value for key, value in obj.items() if key not in head}}
