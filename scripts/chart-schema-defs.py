#!/usr/bin/env python3
"""Fills the `definitions` of charts/fastim-operator/values.schema.json with the Kubernetes
types its hand-written part refers to (`#/definitions/io.k8s...`: ResourceRequirements,
Affinity, Toleration, PodSecurityContext, SecurityContext), copied from the strict
Kubernetes JSON schemas that kubernetes-validate ships, so wrong keys deep inside
`affinity` or `securityContext` are rejected at `helm install` time as well.

    chart-schema-defs.py [--check] [--kubernetes-version 1.35.0] [SCHEMA]

Run it with the Python that has kubernetes-validate (scripts/install-deps.sh --chart puts
one in ${FASTIM_TOOLS:-$HOME/.cache/fastim-tools}/venv). --check only reports whether the
file is current (exit 1 if not).
"""

import argparse
import json
import os
import re
import sys

import kubernetes_validate

REF = re.compile(r"#/(?:\$defs|definitions)/(io\.k8s\.[^\"]+)")
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCHEMA = os.path.join(HERE, "..", "charts", "fastim-operator", "values.schema.json")


def k8s_definitions(version):
    base = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
    path = os.path.join(base, "v%s-local-strict" % version, "_definitions.json")
    if not os.path.exists(path):
        sys.exit("chart-schema-defs: kubernetes-validate has no schemas for %s (%s)" % (version, path))
    with open(path) as f:
        return json.load(f)["$defs"]


def strip(node):
    """Drops descriptions and x-kubernetes-* annotations; points $refs at `definitions`."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" or key.startswith("x-kubernetes-"):
                continue
            if key == "$ref":
                value = value.replace("#/$defs/", "#/definitions/")
            out[key] = strip(value)
        return out
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def render(schema, defs):
    hand = dict(schema)
    hand.pop("definitions", None)
    todo = REF.findall(json.dumps(hand))
    seen = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in defs:
            sys.exit("chart-schema-defs: unknown Kubernetes type %s" % name)
        seen.add(name)
        todo.extend(REF.findall(json.dumps(defs[name])))
    hand["definitions"] = {name: strip(defs[name]) for name in sorted(seen)}
    return json.dumps(hand, indent=2, ensure_ascii=False) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("schema", nargs="?", default=DEFAULT_SCHEMA)
    parser.add_argument("--kubernetes-version", default="1.35.0")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()

    with open(args.schema) as f:
        current = f.read()
    wanted = render(json.loads(current), k8s_definitions(args.kubernetes_version))
    if args.check:
        if current != wanted:
            print("chart-schema-defs: %s is stale: run scripts/chart-schema-defs.py" % args.schema)
            return 1
        return 0
    if current != wanted:
        with open(args.schema, "w") as f:
            f.write(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
