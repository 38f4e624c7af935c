#!/usr/bin/env python3
"""Validates Kubernetes manifests offline, strictly (unknown fields are errors).

    validate-manifests.py [-k 1.35.0] [--crd CRD.yaml]... FILE|-...

- Built-in kinds: the strict JSON schemas of kubernetes-validate for that Kubernetes version.
- Custom resources of a CRD given with --crd (or found in the input): the CRD's
  openAPIV3Schema (as the API server uses it: defaults applied first, unknown fields
  rejected, nullable, int-or-string, int32 ranges) and its x-kubernetes-validations CEL
  rules (evaluated with cel-python).
- ServiceMonitor (monitoring.coreos.com/v1, whose CRD is not available offline): its
  selector must select a Service of the input in its namespace, and each endpoint's port
  must be a named port of that Service.
- Any other kind is an error: nothing is let through unvalidated.
- Consistency across the objects of one invocation: Deployment selectors match their pod
  templates, Services select a Deployment's pods and name ports its containers have,
  probes name container ports, role bindings name roles and pods name ServiceAccounts
  that the input defines (each check only where the input holds that kind at all).

Run it with the Python of the venv that scripts/install-deps.sh --chart makes
(${FASTIM_TOOLS:-$HOME/.cache/fastim-tools}/venv). Exit status 1 if anything failed.
"""

import argparse
import copy
import sys

import celpy
import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

INT32 = (-(2**31), 2**31 - 1)


def load(path):
    text = sys.stdin.read() if path == "-" else open(path).read()
    return [d for d in yaml.safe_load_all(text) if d]


def name_of(obj):
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return "%s/%s%s" % (obj.get("kind", "?"), meta.get("name", "?"), " (namespace %s)" % ns if ns else "")


# --- CRD schemas -------------------------------------------------------------------


def to_json_schema(node):
    """A structural OpenAPI v3 schema as a strict JSON schema."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties",):
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(v) for v in value]
        elif key == "not":
            out[key] = to_json_schema(value)
        elif key.startswith("x-kubernetes-") or key in ("nullable", "format", "default", "description"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("type") == "object" and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("type") == "integer" and node.get("format") == "int32":
        out.setdefault("minimum", INT32[0])
        out.setdefault("maximum", INT32[1])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def apply_defaults(schema, value):
    """Structural defaulting, as the API server does before validation."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in props:
                    apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)


class Cel:
    def __init__(self):
        self.env = celpy.Environment()
        self.programs = {}

    def check(self, schema, value, path, errors):
        """Evaluates every x-kubernetes-validations rule where its value is present."""
        if value is None:
            return
        for rule in schema.get("x-kubernetes-validations") or []:
            if "oldSelf" in rule["rule"]:
                continue  # transition rules need the stored object
            program = self.programs.get(rule["rule"])
            if program is None:
                program = self.env.program(self.env.compile(rule["rule"]))
                self.programs[rule["rule"]] = program
            try:
                ok = program.evaluate({"self": celpy.json_to_cel(value)})
            except Exception as e:  # noqa: BLE001 (an evaluation error fails the object)
                ok = e
            if ok is not True and not (isinstance(ok, celpy.celtypes.BoolType) and bool(ok)):
                msg = rule.get("message") or "failed rule: %s" % rule["rule"]
                if not isinstance(ok, (bool, celpy.celtypes.BoolType)):
                    msg += " (rule did not evaluate: %s)" % ok
                errors.append("%s: %s" % (path or "<root>", msg))
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            for key, sub in props.items():
                if key in value:
                    self.check(sub, value[key], "%s.%s" % (path, key) if path else key, errors)
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                for key in value:
                    if key not in props:
                        self.check(extra, value[key], "%s[%s]" % (path, key), errors)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                self.check(schema["items"], item, "%s[%d]" % (path, i), errors)


class Crds:
    def __init__(self):
        self.schemas = {}  # (apiVersion, kind) -> openAPIV3Schema
        self.cel = Cel()

    def add(self, crd):
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served", True):
                key = ("%s/%s" % (spec["group"], version["name"]), spec["names"]["kind"])
                self.schemas[key] = version["schema"]["openAPIV3Schema"]

    def validate(self, obj):
        """Error messages for a custom resource, or None when no CRD here defines it."""
        schema = self.schemas.get((obj.get("apiVersion"), obj.get("kind")))
        if schema is None:
            return None
        obj = copy.deepcopy(obj)
        apply_defaults(schema, obj)
        strict = to_json_schema(schema)
        strict.setdefault("properties", {})
        strict["properties"].update({
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
            },
        })
        errors = []
        for e in sorted(jsonschema.Draft7Validator(strict).iter_errors(obj), key=lambda e: list(e.path)):
            errors.append("%s: %s" % (".".join(str(p) for p in e.path) or "<root>", e.message))
        if not errors:
            body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
            self.cel.check(schema, body, "", errors)
        return errors


# --- consistency across objects ----------------------------------------------------


def selects(selector, labels):
    return all((labels or {}).get(k) == v for k, v in (selector or {}).items())


def pod_templates(objs):
    for o in objs:
        if o.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
            tpl = (o.get("spec") or {}).get("template") or {}
            yield o, tpl


def ns(obj, default=""):
    return (obj.get("metadata") or {}).get("namespace") or default


def cross_check(objs):
    errors = []
    kinds = {o.get("kind") for o in objs}
    for o, tpl in pod_templates(objs):
        labels = (tpl.get("metadata") or {}).get("labels") or {}
        match = ((o.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if match is not None and not selects(match, labels):
            errors.append("%s: spec.selector does not match the pod template's labels" % name_of(o))
        pod = tpl.get("spec") or {}
        for c in pod.get("containers") or []:
            names = {p.get("name") for p in c.get("ports") or []}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in names:
                    errors.append("%s: container %s %s names port %r it does not have"
                                  % (name_of(o), c.get("name"), probe, port))
        sa = pod.get("serviceAccountName")
        if sa and sa != "default" and "ServiceAccount" in kinds:
            if not any(x.get("kind") == "ServiceAccount" and x["metadata"]["name"] == sa and ns(x) == ns(o)
                       for x in objs):
                errors.append("%s: serviceAccountName %s is not defined here" % (name_of(o), sa))
    workload_ns = {ns(o) for o, _ in pod_templates(objs)}
    for svc in objs:
        if svc.get("kind") != "Service":
            continue
        selector = (svc.get("spec") or {}).get("selector")
        if not selector or ns(svc) not in workload_ns:
            continue
        targets = [tpl for o, tpl in pod_templates(objs)
                   if ns(o) == ns(svc) and selects(selector, (tpl.get("metadata") or {}).get("labels"))]
        if not targets:
            errors.append("%s: its selector matches no pod template here" % name_of(svc))
            continue
        for port in (svc.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str):
                names = {p.get("name") for tpl in targets for c in (tpl.get("spec") or {}).get("containers") or []
                         for p in c.get("ports") or []}
                if target not in names:
                    errors.append("%s: targetPort %r is no container port of the selected pods"
                                  % (name_of(svc), target))
    for b in objs:
        if b.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = b.get("roleRef") or {}
        if ref.get("kind") in kinds:
            found = any(r.get("kind") == ref.get("kind") and r["metadata"]["name"] == ref.get("name")
                        and (ref.get("kind") == "ClusterRole" or ns(r) == ns(b)) for r in objs)
            if not found:
                errors.append("%s: roleRef %s/%s is not defined here" % (name_of(b), ref.get("kind"), ref.get("name")))
        if "ServiceAccount" in kinds:
            for s in b.get("subjects") or []:
                if s.get("kind") == "ServiceAccount" and not any(
                        x.get("kind") == "ServiceAccount" and x["metadata"]["name"] == s.get("name")
                        and ns(x) == s.get("namespace", ns(b)) for x in objs):
                    errors.append("%s: subject ServiceAccount %s/%s is not defined here"
                                  % (name_of(b), s.get("namespace"), s.get("name")))
    return errors


def check_service_monitor(sm, objs):
    errors = []
    spec = sm.get("spec") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    namespaces = (spec.get("namespaceSelector") or {}).get("matchNames") or [ns(sm)]
    services = [s for s in objs if s.get("kind") == "Service" and ns(s) in namespaces
                and selects(selector, (s.get("metadata") or {}).get("labels"))]
    if not services:
        return ["%s: its selector matches no Service here" % name_of(sm)]
    if not spec.get("endpoints"):
        errors.append("%s: no endpoints" % name_of(sm))
    for ep in spec.get("endpoints") or []:
        unknown = set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels",
                             "relabelings", "metricRelabelings", "tlsConfig", "bearerTokenSecret"}
        if unknown:
            errors.append("%s: unexpected endpoint fields %s" % (name_of(sm), sorted(unknown)))
        names = {p.get("name") for s in services for p in (s.get("spec") or {}).get("ports") or []}
        if ep.get("port") not in names:
            errors.append("%s: endpoint port %r is no port of the selected Service" % (name_of(sm), ep.get("port")))
    return errors


# --- main --------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--kubernetes-version", default="1.35.0")
    parser.add_argument("--crd", action="append", default=[], help="a file of CustomResourceDefinitions")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line for every object")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    crds = Crds()
    for path in args.crd:
        for doc in load(path):
            if doc.get("kind") == "CustomResourceDefinition":
                crds.add(doc)

    failed = 0
    for path in args.files:
        objs = load(path)
        for doc in objs:
            if doc.get("kind") == "CustomResourceDefinition":
                crds.add(doc)
        counts = {}
        problems = []
        for obj in objs:
            if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
                problems.append("%s: not a Kubernetes object (no apiVersion/kind)" % name_of(obj))
                continue
            how, errors = None, []
            custom = crds.validate(obj)
            if custom is not None:
                how, errors = "CRD schema + CEL", custom
            elif obj["apiVersion"].startswith("monitoring.coreos.com/") and obj["kind"] == "ServiceMonitor":
                how, errors = "ServiceMonitor consistency (no offline schema)", check_service_monitor(obj, objs)
            else:
                how = "Kubernetes %s strict schema" % kubernetes_validate.utils.major_minor(args.kubernetes_version)
                try:
                    kubernetes_validate.validate(obj, args.kubernetes_version, strict=True)
                except ValidationError as e:
                    errors = ["%s: %s" % (".".join(str(p) for p in e.path) or "<root>", e.message)]
                except SchemaNotFoundError:
                    errors = ["no schema for %s %s (not a built-in kind, and no CRD given with --crd)"
                              % (obj["apiVersion"], obj["kind"])]
            counts[how] = counts.get(how, 0) + 1
            for err in errors:
                problems.append("%s: %s" % (name_of(obj), err))
            if args.verbose and not errors:
                print("  ok   %s (%s)" % (name_of(obj), how))
        problems += cross_check(objs)
        summary = ", ".join("%s: %d" % (k, v) for k, v in counts.items())
        if problems:
            failed += 1
            print("validate: FAIL %s (%d objects; %s)" % (path, len(objs), summary))
            for p in problems:
                print("  FAIL %s" % p)
        else:
            print("validate: ok   %s (%d objects; %s)" % (path, len(objs), summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
