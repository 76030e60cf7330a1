"""Least-privilege RBAC, both ways: what the operator's code calls, and what the chart's rules grant.

The code side is derived statically. Every Kubernetes call the operator makes goes through a `KubeApi`
method with a `Resource` constant (tourniquet/adapters/kube.py), so walking the package with `ast`
finds each call, the resource it names (a constant, `WORKLOADS[...]`, a local variable assigned one,
or a parameter whose callers pass one) and its `subresource=`. Which RBAC verbs a `KubeApi` method
needs is itself derived from kube.py: the HTTP method each verb sends, and whether its path names one
object (get) or the collection (list).

The chart side expands the rendered Roles and ClusterRoles bound to the operator's ServiceAccount into
single permissions, each with its scope: "*" through a ClusterRoleBinding, a namespace through a
RoleBinding. `compare` then reports what the code needs and the chart does not grant, and what the
chart grants that nothing needs (including a grant broader than needed: cluster-wide instead of
per-namespace, or without the resourceNames the need has).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tourniquet.adapters import kube

PACKAGE = Path(kube.__file__).resolve().parents[1]
KUBE_MODULE = "tourniquet.adapters.kube"
CLUSTER = "*"  # the scope of a grant through a ClusterRoleBinding

# Methods whose path argument is built by the caller (`api.request_text(PODS.path(ns, pod, "log"))`).
RAW_METHODS = {"request": None, "request_text": "GET"}
HTTP_VERBS = {
    ("GET", True): "get",
    ("GET", False): "list",
    ("POST", False): "create",
    ("PUT", True): "update",
    ("PATCH", True): "patch",
    ("DELETE", True): "delete",
    ("DELETE", False): "deletecollection",
}

# The command line's modules: the on-call commands, run with the user's own credentials.
ONCALL = (
    "cli.py",
    "cli_base.py",
    "cli_agents.py",
    "cli_incidents.py",
    "cli_ledger.py",
    "cli_postmortem.py",
    "cli_readiness.py",
    "cli_review.py",
)

# Code under operator/tourniquet that does not run under the operator's ServiceAccount.
NOT_OPERATOR = {
    "adapters/kube.py": "the KubeApi verbs themselves",
    **{cli: "the on-call commands, run with the user's own credentials (the on-call ClusterRole)" for cli in ONCALL},
    "sandbox/": "the sandbox command (its API server is kubemu, in testing/kubemu)",
    "runtime/": "the agent-side library, run under the agent's own ServiceAccount",
}


@dataclass(frozen=True, order=True)
class Permission:
    """One RBAC permission: a verb on a resource (or subresource), optionally limited to some names."""

    group: str
    resource: str
    verb: str
    names: tuple[str, ...] = ()

    def __str__(self) -> str:
        group = self.group or "core"
        names = f" named {', '.join(self.names)}" if self.names else ""
        return f"{self.verb} {self.resource} ({group}){names}"


# What Kubernetes grants every authenticated user (the system:basic-user ClusterRole): needed, never in the chart.
EVERYONE = frozenset({Permission("authentication.k8s.io", "selfsubjectreviews", "create")})


@dataclass(frozen=True, order=True)
class Need:
    scope: str  # CLUSTER or a namespace
    permission: Permission

    def __str__(self) -> str:
        where = "cluster-wide" if self.scope == CLUSTER else f"in namespace {self.scope}"
        return f"{self.permission} {where}"


@dataclass(frozen=True)
class Call:
    permission: Permission
    # Needed in each served namespace; False: cluster-wide (a cluster-scoped resource, or a namespaced
    # one listed across all namespaces).
    namespaced: bool
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.where}: {self.permission}"


@dataclass
class Derivation:
    calls: list[Call] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def permissions(self) -> set[Permission]:
        return {call.permission for call in self.calls}


# ---------------------------------------------------------------- KubeApi: method -> RBAC verbs


def _path_names_object(expr: ast.expr) -> bool | None:
    """`res.path(namespace)` is a collection, `res.path(namespace, name[, sub])` one object."""
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "path"):
        return None
    return len(expr.args) >= 2 or any(k.arg == "name" for k in expr.keywords)


def kubeapi_verbs(source: str | None = None) -> dict[str, frozenset[str]]:
    """Each public KubeApi method that reaches the API -> the RBAC verbs it needs (from kube.py's code)."""
    tree = ast.parse(source if source is not None else Path(kube.__file__).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KubeApi")
    methods = {
        fn.name: fn
        for fn in cls.body
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        and not fn.name.startswith("_")
        and fn.name not in RAW_METHODS
    }
    direct: dict[str, set[str]] = defaultdict(set)
    delegates: dict[str, set[str]] = defaultdict(set)
    for name, fn in methods.items():
        for node in ast.walk(fn):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "self"
            ):
                continue
            if node.func.attr == "request" and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant):
                one = _path_names_object(node.args[1])
                if one is None:
                    raise AssertionError(f"KubeApi.{name}: request() with a path not built by Resource.path()")
                direct[name].add(HTTP_VERBS[(str(node.args[0].value), one)])
            elif node.func.attr in methods:
                delegates[name].add(node.func.attr)

    def resolve(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        verbs = set(direct[name])
        for other in delegates[name] - seen:
            verbs |= resolve(other, seen | {name})
        return verbs

    return {name: frozenset(resolve(name)) for name in methods if resolve(name)}


# ---------------------------------------------------------------- call sites


def _resource_constants() -> tuple[dict[str, kube.Resource], dict[str, set[kube.Resource]]]:
    single = {n: v for n, v in vars(kube).items() if isinstance(v, kube.Resource)}
    maps = {
        n: set(v.values())
        for n, v in vars(kube).items()
        if isinstance(v, dict) and v and all(isinstance(x, kube.Resource) for x in v.values())
    }
    return single, maps


def _is_api_receiver(expr: ast.expr) -> bool:
    """`api`, `memo.api`, `self._api`, `kube_api`: what a KubeApi is called in this code base."""
    name = expr.id if isinstance(expr, ast.Name) else expr.attr if isinstance(expr, ast.Attribute) else ""
    return name.lstrip("_") == "api" or name.endswith("_api")


class _Module:
    def __init__(self, path: Path, source: str, relative: str):
        self.relative = relative
        self.tree = ast.parse(source, filename=str(path))
        self.parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(self.tree):
            for child in ast.iter_child_nodes(parent):
                self.parents[child] = parent
        self.functions: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = defaultdict(list)
        self.aliases: dict[str, str] = {}  # local name -> name in tourniquet.adapters.kube
        self.module_aliases: set[str] = set()  # local names of the kube module itself
        for node in ast.walk(self.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.functions[node.name].append(node)
            elif isinstance(node, ast.ImportFrom) and node.module == KUBE_MODULE:
                for alias in node.names:
                    self.aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module == "tourniquet.adapters":
                self.module_aliases |= {a.asname or a.name for a in node.names if a.name == "kube"}
            elif isinstance(node, ast.Import):
                self.module_aliases |= {a.asname for a in node.names if a.name == KUBE_MODULE and a.asname}

    @property
    def uses_kube(self) -> bool:
        return bool(self.aliases or self.module_aliases)

    def enclosing(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        current = self.parents.get(node)
        while current is not None and not isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef):
            current = self.parents.get(current)
        return current

    def where(self, node: ast.AST) -> str:
        return f"{self.relative}:{getattr(node, 'lineno', '?')}"


class _Resolver:
    """Which Resource constants an expression can evaluate to; None when it cannot be told statically."""

    def __init__(self, module: _Module):
        self.module = module
        self.single, self.maps = _resource_constants()

    def _constant(self, expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name) and expr.id in self.module.aliases:
            return self.module.aliases[expr.id]
        if (
            isinstance(expr, ast.Attribute)
            and isinstance(expr.value, ast.Name)
            and expr.value.id in self.module.module_aliases
        ):
            return expr.attr
        return None

    def resolve(
        self, expr: ast.expr, scope: ast.FunctionDef | ast.AsyncFunctionDef | None, depth: int = 0
    ) -> set[kube.Resource] | None:
        if depth > 4:
            return None
        constant = self._constant(expr)
        if constant in self.single:
            return {self.single[constant]}
        if isinstance(expr, ast.Subscript):  # WORKLOADS[ref.kind.value]
            mapping = self._constant(expr.value)
            return set(self.maps[mapping]) if mapping in self.maps else None
        if isinstance(expr, ast.Name):
            return self._resolve_name(expr.id, scope, depth)
        return None

    def _resolve_name(
        self, name: str, scope: ast.FunctionDef | ast.AsyncFunctionDef | None, depth: int
    ) -> set[kube.Resource] | None:
        # Assignments in the function (or, at module level, in the module's own statements).
        nodes = ast.walk(scope) if scope is not None else iter(self.module.tree.body)
        values: list[ast.expr] = []
        for node in nodes:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                values.append(node.value)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                if node.value is not None:
                    values.append(node.value)
            elif (
                isinstance(node, ast.For | ast.AsyncFor)
                and isinstance(node.target, ast.Name)
                and node.target.id == name
                and isinstance(node.iter, ast.Tuple | ast.List | ast.Set)
            ):
                values.extend(node.iter.elts)  # for resource in (DEPLOYMENTS, STATEFULSETS)
        if values:
            found: set[kube.Resource] = set()
            for value in values:
                resolved = self.resolve(value, scope, depth + 1)
                if resolved is None:
                    return None
                found |= resolved
            return found
        if scope is not None:
            return self._resolve_parameter(name, scope, depth)
        return None

    def _resolve_parameter(
        self, name: str, scope: ast.FunctionDef | ast.AsyncFunctionDef, depth: int
    ) -> set[kube.Resource] | None:
        """A parameter: whatever the function's callers in the same module pass for it."""
        params = [a.arg for a in (*scope.args.posonlyargs, *scope.args.args)]
        kwonly = [a.arg for a in scope.args.kwonlyargs]
        if name not in params and name not in kwonly:
            return None
        found: set[kube.Resource] = set()
        callers = 0
        for node in ast.walk(self.module.tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if called != scope.name:
                continue
            offset = 1 if isinstance(func, ast.Attribute) and params[:1] in (["self"], ["cls"]) else 0
            argument = next((k.value for k in node.keywords if k.arg == name), None)
            if argument is None and name in params:
                index = params.index(name) - offset
                argument = node.args[index] if 0 <= index < len(node.args) else None
            if argument is None:
                continue
            resolved = self.resolve(argument, self.module.enclosing(node), depth + 1)
            if resolved is None:
                return None
            callers += 1
            found |= resolved
        return found if callers else None


def _literal(expr: ast.expr | None) -> str | None:
    return expr.value if isinstance(expr, ast.Constant) and isinstance(expr.value, str) else None


def _argument(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    if len(call.args) > index:
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _is_none(expr: ast.expr | None) -> bool:
    return expr is None or (isinstance(expr, ast.Constant) and expr.value is None)


@dataclass
class _Site:
    """One API call site, decoded: which resources, which subresource, which verbs, how wide."""

    resources: set[kube.Resource]
    subresource: ast.expr | None
    verbs: Iterable[str]
    # No namespace (`api.list(RESOURCE)`): every namespace, a cluster-wide need even when the operator
    # serves a list of namespaces. A namespace given as a variable counts as one of those it serves.
    everywhere: bool


def _raw_site(call: ast.Call, method: str, resolver: _Resolver, scope: Any) -> _Site | None:
    """`api.request_text(PODS.path(ns, pod, "log"))`, `api.request("GET", RES.path(ns))`."""
    if method == "request_text":
        http, path = "GET", _argument(call, 0, "path")
    else:
        http, path = _literal(_argument(call, 0, "method")), _argument(call, 1, "path")
    one = _path_names_object(path) if path is not None else None
    if http is None or one is None or (http.upper(), one) not in HTTP_VERBS:
        return None
    assert isinstance(path, ast.Call) and isinstance(path.func, ast.Attribute)
    resources = resolver.resolve(path.func.value, scope)
    if resources is None:
        return None
    return _Site(
        resources,
        _argument(path, 2, "subresource"),
        [HTTP_VERBS[(http.upper(), one)]],
        _is_none(_argument(path, 0, "namespace")),
    )


def _verb_site(call: ast.Call, verbs: frozenset[str], resolver: _Resolver, scope: Any) -> _Site | None:
    """`api.patch(AGENTINCIDENTS, namespace, name, body, subresource="status")` and the like."""
    first = _argument(call, 0, "res")
    resources = resolver.resolve(first, scope) if first is not None else None
    if resources is None:
        return None
    subresource = next((k.value for k in call.keywords if k.arg == "subresource"), None)
    return _Site(resources, subresource, verbs, _is_none(_argument(call, 1, "namespace")))


def _calls_in(module: _Module, verbs: dict[str, frozenset[str]], derivation: Derivation) -> None:
    resolver = _Resolver(module)
    for node in ast.walk(module.tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        method = node.func.attr
        if method not in verbs and method not in RAW_METHODS:
            continue
        scope = module.enclosing(node)
        if method in RAW_METHODS:
            site = _raw_site(node, method, resolver, scope)
        else:
            site = _verb_site(node, verbs[method], resolver, scope)
        if site is None:
            # Not traced. A dict's .get() or a list's .list() is not an API call; a call on something named
            # like the API client, in a module that imports the Kubernetes adapter, must be traced.
            if module.uses_kube and _is_api_receiver(node.func.value):
                derivation.errors.append(
                    f"{module.where(node)}: {method}() on a resource that cannot be traced to a Resource "
                    "constant of tourniquet.adapters.kube (build paths with <RESOURCE>.path(...))"
                )
            continue
        subresource = _literal(site.subresource)
        if subresource is None and not _is_none(site.subresource):
            derivation.errors.append(f"{module.where(node)}: the subresource is not a string literal")
            continue
        for resource in site.resources:
            plural = f"{resource.plural}/{subresource}" if subresource else resource.plural
            for verb in site.verbs:
                permission = Permission(resource.group, plural, verb)
                derivation.calls.append(
                    Call(permission, resource.namespaced and not site.everywhere, module.where(node))
                )


def _owner_references(module: _Module, derivation: Derivation) -> None:
    """A controller ownerReference with blockOwnerDeletion needs `update` on the owner's finalizers."""
    kinds = {r.kind: r for r in _resource_constants()[0].values()}
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if called != "owner_reference":
            continue
        kind = _literal(node.args[0] if node.args else None)
        if kind not in kinds:
            derivation.errors.append(f"{module.where(node)}: owner_reference() of a kind that is not a literal")
            continue
        owner = kinds[kind]
        derivation.calls.append(
            Call(Permission(owner.group, f"{owner.plural}/finalizers", "update"), owner.namespaced, module.where(node))
        )


def blocks_owner_deletion() -> bool:
    """Whether tourniquet.domain.names.owner_reference sets blockOwnerDeletion: true."""
    from tourniquet.domain import names

    reference = names.owner_reference("AgentDeployment", "x", "00000000-0000-0000-0000-000000000000")
    return bool(reference.get("blockOwnerDeletion"))


def _modules(root: Path, include: Iterable[str] | None, exclude: Iterable[str]) -> Iterator[tuple[Path, str]]:
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if include is not None and relative not in include:
            continue
        if any(relative == e or (e.endswith("/") and relative.startswith(e)) for e in exclude):
            continue
        yield path, relative


def derive_calls(
    root: Path = PACKAGE, *, include: Iterable[str] | None = None, exclude: Iterable[str] = tuple(NOT_OPERATOR)
) -> Derivation:
    """Every API call under `root` (a package directory) as permissions, with where it is made."""
    verbs = kubeapi_verbs()
    derivation = Derivation()
    block = blocks_owner_deletion()
    for path, relative in _modules(root, include, exclude):
        module = _Module(path, path.read_text(), relative)
        _calls_in(module, verbs, derivation)
        if block:
            _owner_references(module, derivation)
    return derivation


# ---------------------------------------------------------------- the chart's rules


def _expand(rule: dict[str, Any]) -> Iterator[Permission]:
    names = tuple(sorted(rule.get("resourceNames") or ()))
    for url in rule.get("nonResourceURLs") or ():
        for verb in rule.get("verbs") or ():
            yield Permission("", f"url:{url}", verb)
    for group in rule.get("apiGroups") or ():
        for resource in rule.get("resources") or ():
            for verb in rule.get("verbs") or ():
                yield Permission(group, resource, verb, names)


def rules_permissions(rules: Iterable[dict[str, Any]]) -> set[Permission]:
    return {p for rule in rules for p in _expand(rule)}


def granted(docs: Iterable[dict[str, Any]], namespace: str, service_account: str) -> dict[Need, list[str]]:
    """What the rendered RBAC grants one ServiceAccount, each grant with the role(s) it comes from."""
    docs = list(docs)
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "Role"}
    cluster_roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    grants: dict[Need, list[str]] = defaultdict(list)
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = binding.get("subjects") or []
        if not any(
            s.get("kind") == "ServiceAccount" and s.get("name") == service_account and s.get("namespace") == namespace
            for s in subjects
        ):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"]["namespace"] if binding["kind"] == "RoleBinding" else CLUSTER
        if ref["kind"] == "ClusterRole":
            role = cluster_roles.get(ref["name"])
        else:
            role = roles.get((binding["metadata"]["namespace"], ref["name"]))
        if role is None:
            raise AssertionError(f"{binding['kind']} {binding['metadata']['name']} refers to a missing {ref['kind']}")
        source = f"{role['kind']} {role['metadata']['name']}"
        for permission in rules_permissions(role.get("rules") or []):
            grants[Need(scope, permission)].append(source)
    return dict(grants)


@dataclass
class Diff:
    missing: list[Need]  # needed, not granted
    unused: list[Need]  # granted, never needed in that form

    def __bool__(self) -> bool:
        return bool(self.missing or self.unused)

    def __str__(self) -> str:
        lines = [f"  not granted: {n}" for n in self.missing]
        lines += [f"  granted but not needed: {n}" for n in self.unused]
        return "\n".join(lines)


def _covers(grant: Need, need: Need) -> bool:
    g, n = grant.permission, need.permission
    return (
        grant.scope in (CLUSTER, need.scope)
        and (g.group, g.resource, g.verb) == (n.group, n.resource, n.verb)
        and (not g.names or set(n.names) <= set(g.names))
    )


def compare(needs: Iterable[Need], grants: Iterable[Need]) -> Diff:
    """Both ways: every need covered by a grant; every grant exactly some need (no broader, no extra)."""
    needs, grants = set(needs), set(grants)
    missing = sorted(n for n in needs if not any(_covers(g, n) for g in grants))
    unused = sorted(grants - needs)
    return Diff(missing, unused)
