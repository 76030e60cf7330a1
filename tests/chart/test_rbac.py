"""Least privilege, both ways: the chart grants every API call the operator makes, and nothing else.

What the operator needs = what its code calls (derived from the source by tests/chart/rbac.py)
                        + what Kopf itself does for the handlers registered (the table below).
The chart's rules are rendered for each variant, expanded to single permissions with their scope
(cluster-wide or one namespace), and compared. The comparison is also run on doctored rule sets and
on doctored code, to show that it does fail.
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.chart import rbac
from tests.chart.rbac import CLUSTER, Need, Permission
from tests.chart.render import FULLNAME, NAMESPACE, VARIANTS, render, render_variant
from tourniquet.adapters import kube

# ---------------------------------------------------------------- what Kopf itself needs


class KopfNeed(NamedTuple):
    when: str  # "always", "namespaced" (a watchNamespaces list) or "peering" (replicas > 1)
    per_namespace: bool  # needed in each served namespace (cluster-wide when serving them all)
    group: str
    resource: str
    verbs: tuple[str, ...]
    why: str


# Kopf makes these calls on the operator's behalf (kopf 1.45: kopf/_core/reactor/observation.py,
# kopf/_cogs/clients/{watching,patching,events}.py, kopf/_core/engines/peering.py). The resources Kopf
# serves for the handlers are not listed here: they are read from Kopf's registry after importing
# tourniquet.handlers (`kopf_served`), so a handler on a new resource shows up as a need by itself.
KOPF_NEEDS = [
    KopfNeed("always", True, "", "events", ("create",), "posting: handler failures and warnings become Events"),
    KopfNeed(
        "always",
        False,
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        ("list", "watch"),
        "the resource observer lists, then watches CRDs to notice served resources appear and change",
    ),
    KopfNeed(
        "namespaced",
        False,
        "",
        "namespaces",
        ("list", "watch"),
        "the namespace observer starts and stops the per-namespace watches as namespaces come and go",
    ),
    # A ClusterKopfPeering when serving every namespace, a KopfPeering in each served namespace otherwise.
    KopfNeed("peering", True, "kopf.dev", "<peerings>", ("list", "watch"), "peering: who else is running"),
    KopfNeed("peering", True, "kopf.dev", "<peerings>", ("patch",), "peering: the keep-alive in the named object"),
]


# Run in a separate interpreter: importing tourniquet.handlers registers them in Kopf's default registry,
# which would leak into other tests that run Kopf in this process.
_REGISTERED = """
import json, kopf, tourniquet.handlers
registry = kopf.get_default_registry()
print(json.dumps({
    kind: [
        [h.id, h.selector.group, h.selector.plural or h.selector.any_name or h.selector.kind]
        for h in getattr(registry, "_" + kind).get_all_handlers()
    ]
    for kind in ("changing", "spawning", "watching", "indexing", "webhooks")
}))
"""
# Change handlers (create/update/resume/delete) and timers/daemons patch the object they serve: its
# finalizer, and Kopf's progress and diff-base annotations. Index and event handlers only watch.
_KOPF_VERBS = {
    "changing": {"list", "watch", "patch"},
    "spawning": {"list", "watch", "patch"},
    "watching": {"list", "watch"},
    "indexing": {"list", "watch"},
}


@functools.cache
def kopf_served() -> dict[tuple[str, str], frozenset[str]]:
    """The resources Kopf serves for the registered handlers -> the verbs that takes."""
    result = subprocess.run([sys.executable, "-c", _REGISTERED], capture_output=True, text=True, check=True, timeout=60)
    registered = json.loads(result.stdout)
    assert not registered["webhooks"], "admission webhooks need a Service, a certificate and RBAC: not in the chart"
    kinds = {
        (r.group, name): r
        for r in vars(kube).values()
        if isinstance(r, kube.Resource)
        for name in (r.plural, r.kind, r.kind.lower())
    }
    served: dict[tuple[str, str], set[str]] = {}
    for kind, verbs in _KOPF_VERBS.items():
        for handler_id, group, name in registered[kind]:
            resource = kinds.get((group or "", name or ""))
            assert resource is not None, f"handler {handler_id} serves {group}/{name}: add it to adapters/kube.py"
            served.setdefault((resource.group, resource.plural), set()).update(verbs)
    return {key: frozenset(verbs) for key, verbs in served.items()}


def ledger_secret_names(values: dict) -> tuple[str, ...]:
    """The Secrets the operator may get: the agents' spec.ledger Secrets listed, and the default ledger's."""
    ledger = values.get("ledger") or {}
    default = (ledger.get("defaultSecret") or {}).get("name")
    return tuple(sorted({*(ledger.get("secretNames") or ()), *([default] if default else [])}))


def operator_needs(values: dict[str, Any]) -> set[Need]:
    """Everything the operator needs for these chart values, each at the scope it is needed in."""
    namespaces = values.get("watchNamespaces") or []
    peering = values.get("replicas", 1) > 1
    peering_name = values.get("peering", {}).get("name", "tourniquet")
    scopes = [CLUSTER] if not namespaces else list(namespaces)
    conditions = {"always", *(["namespaced"] if namespaces else []), *(["peering"] if peering else [])}
    derived = rbac.derive_calls()
    assert not derived.errors, "\n".join(derived.errors)

    needs: set[Need] = set()

    def add(permission: Permission, namespaced: bool) -> None:
        for scope in scopes if namespaced else [CLUSTER]:
            needs.add(Need(scope, permission))

    secret_names = ledger_secret_names(values)
    for call in derived.calls:
        permission = call.permission
        if (permission.group, permission.resource) == ("", "secrets"):
            # The ledger Secrets the agents name: get on those only; none listed, none readable (by design).
            if not secret_names or permission.verb != "get":
                continue
            permission = Permission("", "secrets", "get", secret_names)
        add(permission, call.namespaced)
    for (group, plural), verbs in kopf_served().items():
        for verb in verbs:
            add(Permission(group, plural, verb), True)
    for need in KOPF_NEEDS:
        if need.when not in conditions:
            continue
        resource = need.resource
        if resource == "<peerings>":
            resource = "kopfpeerings" if namespaces else "clusterkopfpeerings"
        for verb in need.verbs:
            names = (peering_name,) if resource.endswith("kopfpeerings") and verb == "patch" else ()
            add(Permission(need.group, resource, verb, names), need.per_namespace)
    return needs


def chart_grants(docs: list[dict[str, Any]], service_account: str = FULLNAME) -> set[Need]:
    return set(rbac.granted(docs, NAMESPACE, service_account))


# ---------------------------------------------------------------- the chart against the code


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_chart_grants_exactly_what_the_operator_uses(variant: str) -> None:
    values = VARIANTS[variant]
    account = values.get("serviceAccount", {}).get("name") or FULLNAME
    diff = rbac.compare(operator_needs(values), chart_grants(render_variant(variant), account))
    assert not diff, f"the chart's RBAC and the operator's API calls disagree:\n{diff}"


def test_namespaced_rules_live_in_each_watched_namespace_only() -> None:
    docs = render_variant("namespaced")
    roles = sorted((d["kind"], d["metadata"].get("namespace")) for d in docs if d["kind"] in ("Role", "RoleBinding"))
    assert roles == [("Role", "payments"), ("Role", "support"), ("RoleBinding", "payments"), ("RoleBinding", "support")]
    cluster_role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == FULLNAME)
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert {"customresourcedefinitions", "namespaces"} <= cluster_resources
    per_namespace = {"configmaps", "pods", "pods/log", "events", "deployments", "networkpolicies", "scaledobjects"}
    assert not cluster_resources & per_namespace


def test_no_wildcards_and_secrets_only_by_name() -> None:
    for variant in VARIANTS:
        names = list(ledger_secret_names(VARIANTS[variant]))
        for doc in render_variant(variant):
            for rule in doc.get("rules") or []:
                assert "*" not in rule.get("verbs", []) + rule.get("resources", []) + rule.get("apiGroups", [])
                if "secrets" in rule.get("resources", []):
                    assert rule["resources"] == ["secrets"] and rule["verbs"] == ["get"], variant
                    assert rule.get("resourceNames") == names and names, variant


def test_the_ledger_secrets_are_readable_by_name_in_each_watched_namespace_only() -> None:
    docs = render_variant("ledger")
    rules = [
        (d["kind"], d["metadata"].get("namespace"), r.get("resourceNames"))
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
        for r in d.get("rules") or []
        if "secrets" in r["resources"]
    ]
    assert rules == [("Role", "support", ["agents-ledger", "pricing-ledger", "refund-ledger"])]
    operator = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["TOURNIQUET_LEDGER_SECRET"] == "agents-ledger/url"  # the default ledger of agents naming none
    defaults = next(d for d in render_variant("default") if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert "TOURNIQUET_LEDGER_SECRET" not in {e["name"] for e in defaults["containers"][0]["env"]}
    assert not [r for d in render_variant("default") for r in d.get("rules") or [] if "secrets" in r["resources"]]


def test_the_oncall_role_is_exactly_what_the_commands_call() -> None:
    derived = rbac.derive_calls(include=rbac.ONCALL, exclude=())
    assert not derived.errors, "\n".join(derived.errors)
    oncall = next(d for d in render_variant("default") if d["metadata"]["name"] == f"{FULLNAME}-oncall")
    granted = rbac.rules_permissions(oncall["rules"])
    needed = derived.permissions() - rbac.EVERYONE
    assert needed == granted, f"not granted: {needed - granted}; granted but not used: {granted - needed}"
    assert not [d for d in render_variant("customised") if d["metadata"]["name"].endswith("-oncall")]


def test_rbac_can_be_left_to_the_platform_team() -> None:
    docs = render({"rbac": {"create": False, "oncall": {"create": False}}})
    assert not [d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]


# ---------------------------------------------------------------- the comparison does fail


def _doctor(docs: list[dict[str, Any]], kind: str, change: Any) -> list[dict[str, Any]]:
    docs = copy.deepcopy(docs)
    role = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == FULLNAME)
    change(role["rules"])
    return docs


def test_a_missing_grant_is_reported() -> None:
    def drop_status_patch(rules: list[dict[str, Any]]) -> None:
        rules.remove(next(r for r in rules if "agentincidents/status" in r["resources"]))

    diff = rbac.compare(
        operator_needs({}), chart_grants(_doctor(render_variant("default"), "ClusterRole", drop_status_patch))
    )
    assert [str(n) for n in diff.missing] == [
        "patch agentdeployments/status (tourniquet.dev) cluster-wide",
        "patch agentincidents/status (tourniquet.dev) cluster-wide",
    ]
    assert diff.unused == []


def test_an_extra_grant_is_reported() -> None:
    def read_secrets(rules: list[dict[str, Any]]) -> None:
        rules.append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
        next(r for r in rules if r["resources"] == ["configmaps"])["verbs"].append("update")

    diff = rbac.compare(
        operator_needs({}), chart_grants(_doctor(render_variant("default"), "ClusterRole", read_secrets))
    )
    assert [str(n) for n in diff.unused] == [
        "update configmaps (core) cluster-wide",
        "get secrets (core) cluster-wide",
    ]
    assert diff.missing == []


def test_a_wildcard_is_reported_as_broader_than_needed() -> None:
    def wildcard(rules: list[dict[str, Any]]) -> None:
        next(r for r in rules if r["resources"] == ["configmaps"])["verbs"] = ["*"]

    diff = rbac.compare(operator_needs({}), chart_grants(_doctor(render_variant("default"), "ClusterRole", wildcard)))
    assert "* configmaps (core) cluster-wide" in [str(n) for n in diff.unused]
    assert {n.permission.verb for n in diff.missing} == {"get", "list", "watch", "create", "patch", "delete"}


def test_a_cluster_wide_grant_where_a_namespace_suffices_is_reported() -> None:
    values = VARIANTS["namespaced"]
    docs = copy.deepcopy(render_variant("namespaced"))
    cluster_role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == FULLNAME)
    cluster_role["rules"].append({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]})
    diff = rbac.compare(operator_needs(values), chart_grants(docs))
    assert [str(n) for n in diff.unused] == ["list pods (core) cluster-wide"]
    assert diff.missing == []


def test_an_unrestricted_peering_patch_is_reported() -> None:
    def any_peering(rules: list[dict[str, Any]]) -> None:
        next(r for r in rules if r.get("resourceNames"))["resourceNames"] = []

    values = VARIANTS["ha"]
    diff = rbac.compare(operator_needs(values), chart_grants(_doctor(render_variant("ha"), "ClusterRole", any_peering)))
    assert [str(n) for n in diff.unused] == ["patch clusterkopfpeerings (kopf.dev) cluster-wide"]
    assert diff.missing == []


def test_a_binding_to_another_account_grants_nothing() -> None:
    docs = copy.deepcopy(render_variant("namespaced"))
    binding = next(d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["namespace"] == "support")
    binding["subjects"][0]["name"] = "someone-else"
    diff = rbac.compare(operator_needs(VARIANTS["namespaced"]), chart_grants(docs))
    assert diff.missing and {n.scope for n in diff.missing} == {"support"}


def test_peering_without_the_peering_rules_is_reported() -> None:
    values = VARIANTS["ha-namespaced"]
    diff = rbac.compare(operator_needs(values), chart_grants(render_variant("namespaced")))
    assert {str(n) for n in diff.missing} == {
        f"{verb} kopfpeerings (kopf.dev){named} in namespace {ns}"
        for ns in ("payments", "support")
        for verb, named in (("list", ""), ("watch", ""), ("patch", " named tourniquet"))
    }


# ---------------------------------------------------------------- the derivation itself


def test_kubeapi_verbs_come_from_the_http_method_and_path() -> None:
    verbs = rbac.kubeapi_verbs()
    assert verbs["get"] == verbs["get_or_none"] == {"get"}
    assert verbs["list"] == verbs["list_if_served"] == {"list"}
    assert verbs["create"] == {"create"}
    assert verbs["patch"] == {"patch"}
    assert verbs["replace"] == {"update"}
    assert verbs["delete"] == {"delete"}
    assert "close" not in verbs and "from_config" not in verbs


def test_kubeapi_verbs_follow_delegation() -> None:
    source = textwrap.dedent(
        """
        class KubeApi:
            async def request(self, method, path): ...
            async def get(self, res, namespace, name):
                return await self.request("GET", res.path(namespace, name))
            async def list(self, res, namespace=None):
                return await self.request("GET", res.path(namespace))
            async def create(self, res, namespace, body):
                return await self.request("POST", res.path(namespace), body=body)
            async def ensure(self, res, namespace, body):
                try:
                    return await self.create(res, namespace, body)
                except Exception:
                    return await self.get(res, namespace, body["metadata"]["name"])
            async def purge(self, res, namespace):
                return await self.request("DELETE", res.path(namespace))
        """
    )
    assert rbac.kubeapi_verbs(source) == {
        "get": {"get"},
        "list": {"list"},
        "create": {"create"},
        "ensure": {"create", "get"},
        "purge": {"deletecollection"},
    }


def _derive(tmp_path: Path, source: str) -> rbac.Derivation:
    (tmp_path / "module.py").write_text(textwrap.dedent(source))
    return rbac.derive_calls(tmp_path, exclude=())


def test_the_derivation_traces_resources_through_names_and_parameters(tmp_path: Path) -> None:
    derivation = _derive(
        tmp_path,
        """
        from tourniquet.adapters.kube import CONFIGMAPS, PODS, WORKLOADS, NAMESPACES
        from tourniquet.adapters import kube as k
        from tourniquet.domain import names

        async def act(api, memo, ref):
            await api.delete(CONFIGMAPS, "ns", "x")
            await memo.api.patch(WORKLOADS[ref.kind], "ns", ref.name, {}, subresource="scale")
            resource = k.NETWORKPOLICIES
            await api.create(resource, "ns", {})
            await _helper(api, k.SCALEDOBJECTS)
            await api.request_text(PODS.path("ns", "pod", "log"))
            await api.list(NAMESPACES)
            owner = names.owner_reference("AgentIncident", "x", "uid")
            status = {}.get("status")  # a dict's get: not an API call

        async def _helper(api, res):
            await api.get(res, "ns", "x")
        """,
    )
    assert derivation.errors == []
    assert {(str(c.permission), c.namespaced) for c in derivation.calls} == {
        ("delete configmaps (core)", True),
        ("patch deployments/scale (apps)", True),
        ("patch statefulsets/scale (apps)", True),
        ("create networkpolicies (networking.k8s.io)", True),
        ("get scaledobjects (keda.sh)", True),
        ("get pods/log (core)", True),
        ("list namespaces (core)", False),
        ("update agentincidents/finalizers (tourniquet.dev)", True),
    }


def test_a_call_the_derivation_cannot_trace_fails_loudly(tmp_path: Path) -> None:
    derivation = _derive(
        tmp_path,
        """
        from tourniquet.adapters.kube import CONFIGMAPS, KubeApi, Resource

        async def act(api: KubeApi, plural: str):
            await api.get(Resource("", "v1", plural, "Thing"), "ns", "x")
            await api.request("GET", f"/api/v1/namespaces/ns/{plural}")
            await api.patch(CONFIGMAPS, "ns", "x", {}, subresource=plural)
        """,
    )
    assert [e.split(": ", 1)[0] for e in derivation.errors] == ["module.py:5", "module.py:6", "module.py:7"]
    assert "cannot be traced" in derivation.errors[0]
    assert "not a string literal" in derivation.errors[2]


def test_the_operator_code_is_fully_traced() -> None:
    derivation = rbac.derive_calls()
    assert derivation.errors == []
    places = {call.where.split(":")[0] for call in derivation.calls}
    # The modules that talk to the API are all seen (a sanity check on the walk itself).
    seen = {"levers/drain.py", "levers/egress.py", "reconcilers/evidence.py", "reconcilers/incident_driver.py"}
    assert seen <= places
    assert not any(p.startswith(tuple(rbac.NOT_OPERATOR)) for p in places)
