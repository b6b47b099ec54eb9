#!/usr/bin/env python3
"""Prove charts/mouthmap and infra/ as far as tools can without a cluster.

For the chart, once per values file (default, ci/gpu-values.yaml, ci/minimal-values.yaml,
ci/cpu-values.yaml):
``helm lint --strict``, ``helm template``, then on the rendered manifests
``kubernetes-validate -k 1.30.0 --strict``, ``checkov`` (policy scan) and our structural
schemas for the custom resources kubernetes-validate has no schema for (ServiceMonitor,
PrometheusRule). For infra/: ``kubectl kustomize`` of the local kustomizations, the same
three checks, the PyTorchJob's schema and its pod templates validated and scanned as Pods,
and the version pins. ``yamllint`` over every YAML file of both.

Run with the tools venv's Python (scripts/k8s_tools.sh installs it):
    .cache/k8s-tools/venv/bin/python scripts/validate_k8s.py [chart|infra|yamllint|all] [--json]
Exit status 0 only when every check passed with zero errors.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "mouthmap"
INFRA = ROOT / "infra"
K8S_VERSION = "1.30.0"
VALUES = {
    "default": None,
    "gpu": "ci/gpu-values.yaml",
    "minimal": "ci/minimal-values.yaml",
    "cpu": "ci/cpu-values.yaml",
}
LOCAL_KUSTOMIZATIONS = ["cluster/mlflow"]  # the others pull pinned remote bases (no network)
MANIFEST_DIRS = ["cluster/training"]  # plain manifests, checked together (policies + pods)


@dataclass
class Check:
    target: str
    tool: str
    ok: bool
    errors: int
    detail: str = ""
    resources: list[str] = field(default_factory=list)


def tool(name: str) -> str:
    """A tool from the tools bin dir next to this interpreter, or from PATH."""
    here = Path(sys.executable).parent
    for cand in (here / name, here.parent.parent / "bin" / name):
        if cand.exists():
            return str(cand)
    return name


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def docs_of(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


# --- structural schemas of the custom resources we write ------------------------------------
# Written from the CRDs' documented fields (prometheus-operator monitoring.coreos.com/v1,
# training-operator kubeflow.org/v1 v1.8): strict on the fields we use, so a typo fails.

_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METRIC_NAME = "^[A-Za-z_:][A-Za-z0-9_:]*$"
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)(ms|s|m|h|d|w|y))+)$"}

SCHEMAS: dict[tuple[str, str], dict] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["spec"],
        "properties": {"metadata": _META, "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": _LABELS}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array",
                                                                    "items": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": _DURATION, "scrapeTimeout": _DURATION,
                                   "scheme": {"enum": ["http", "https"]},
                                   "honorLabels": {"type": "boolean"}}}},
            }}},
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object", "required": ["spec"],
        "properties": {"metadata": _META, "spec": {
            "type": "object", "additionalProperties": False, "required": ["groups"],
            "properties": {"groups": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "rules"],
                "properties": {"name": {"type": "string"}, "interval": _DURATION,
                               "rules": {"type": "array", "items": {
                                   "type": "object", "additionalProperties": False,
                                   "required": ["expr"],
                                   "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                   "properties": {
                                       "alert": {"type": "string", "pattern": _METRIC_NAME},
                                       "record": {"type": "string"},
                                       "expr": {"type": "string", "minLength": 1},
                                       "for": _DURATION, "keep_firing_for": _DURATION,
                                       "labels": _LABELS, "annotations": _LABELS}}}}}}}}},
    },
    ("kubeflow.org/v1", "PyTorchJob"): {
        "type": "object", "required": ["spec"],
        "properties": {"metadata": _META, "spec": {
            "type": "object", "additionalProperties": False, "required": ["pytorchReplicaSpecs"],
            "properties": {
                "nprocPerNode": {"type": "string", "pattern": "^(auto|cpu|gpu|[1-9][0-9]*)$"},
                "elasticPolicy": {"type": "object"},
                "runPolicy": {"type": "object", "additionalProperties": False, "properties": {
                    "cleanPodPolicy": {"enum": ["None", "Running", "All"]},
                    "backoffLimit": {"type": "integer", "minimum": 0},
                    "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                    "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                    "suspend": {"type": "boolean"}, "schedulingPolicy": {"type": "object"}}},
                "pytorchReplicaSpecs": {
                    "type": "object", "additionalProperties": False, "required": ["Master"],
                    "properties": {r: {
                        "type": "object", "additionalProperties": False,
                        "required": ["replicas", "template"],
                        "properties": {"replicas": {"type": "integer", "minimum": 1},
                                       "restartPolicy": {"enum": ["Always", "OnFailure", "Never",
                                                                  "ExitCode"]},
                                       "template": {"type": "object", "required": ["spec"]}}}
                        for r in ("Master", "Worker")}},
            }}},
    },
}  # fmt: skip


def check_custom(docs: list[dict], target: str) -> Check:
    errors, names = [], []
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        if key not in SCHEMAS:
            continue
        names.append(f"{d['kind']}/{d['metadata']['name']}")
        for e in jsonschema.Draft7Validator(SCHEMAS[key]).iter_errors(d):
            errors.append(f"{d['kind']}/{d['metadata'].get('name')}: {e.json_path}: {e.message}")
        if d["kind"] == "PyTorchJob":
            for role, spec in d["spec"]["pytorchReplicaSpecs"].items():
                names_ = [c["name"] for c in spec["template"]["spec"]["containers"]]
                if "pytorch" not in names_:  # the operator wires env/ports into this one only
                    errors.append(f"PyTorchJob {role}: no container named 'pytorch' ({names_})")
    return Check(target, "crd-schema", not errors, len(errors), "\n".join(errors), names)


def unknown_kinds(docs: list[dict]) -> list[str]:
    """Custom resources that neither kubernetes-validate nor our schemas know."""
    out = []
    for d in docs:
        api = d.get("apiVersion", "")
        if (api, d.get("kind")) not in SCHEMAS and "/" in api and not _builtin(api):
            out.append(f"{api}/{d['kind']}")
    return out


def _builtin(api_version: str) -> bool:
    group = api_version.split("/")[0]
    return group.endswith(".k8s.io") or group in {"apps", "batch", "policy", "autoscaling"}


def kubernetes_validate(path: Path, docs: list[dict], target: str) -> Check:
    proc = run([tool("kubernetes-validate"), "-k", K8S_VERSION, "--strict", str(path)])
    out = proc.stdout + proc.stderr
    errors = [ln for ln in out.splitlines() if ln.startswith("ERROR")]
    passed = [ln for ln in out.splitlines() if ln.startswith("INFO") and " passed " in ln]
    custom = {(d["apiVersion"], d["kind"]) for d in docs if (d["apiVersion"], d["kind"]) in SCHEMAS}
    # only a missing schema for a kind we validate ourselves is an acceptable warning
    warns = [ln for ln in out.splitlines() if ln.startswith("WARN")
             and not any(f"kind {k} with api version {a}" in ln for a, k in custom)]  # fmt: skip
    bad = errors + warns
    ok = proc.returncode == 0 and not bad
    return Check(target, "kubernetes-validate", ok, len(bad) + (proc.returncode != 0 and not bad),
                 "\n".join(bad) or (out[-2000:] if proc.returncode else ""),
                 [ln.split("resource ")[1].split(" against")[0] for ln in passed])  # fmt: skip


def checkov(path: Path, config: Path, target: str) -> Check:
    proc = run([tool("checkov"), "-f", str(path), "--config-file", str(config), "-o", "json"],
               env={**os.environ, "LOG_LEVEL": "ERROR"})  # fmt: skip
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        if "no resources" in proc.stdout.lower() or not proc.stdout.strip():
            return Check(
                target, "checkov", False, 1, "checkov scanned nothing: " + proc.stderr[-500:]
            )
        return Check(target, "checkov", False, 1, proc.stdout[-2000:] + proc.stderr[-2000:])
    reports = report if isinstance(report, list) else [report]
    failed, passed, skipped = [], 0, 0
    for r in reports:
        res = r.get("results", {})
        failed += [f"{c['check_id']} {c['check_name']}: {c['resource']}"
                   for c in res.get("failed_checks", [])]  # fmt: skip
        passed += int(r.get("summary", {}).get("passed", 0))
        skipped += int(r.get("summary", {}).get("skipped", 0))
    detail = "\n".join(failed) or f"{passed} passed, {skipped} skipped (with reasons)"
    return Check(target, "checkov", not failed and passed > 0, len(failed), detail)


def validate_manifests(
    text: str, target: str, config: Path, extra_pods: bool = False
) -> list[Check]:
    """kubernetes-validate, checkov and the CRD schemas over one rendered manifest stream."""
    docs = docs_of(text)
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{re.sub(r'[^a-z0-9]+', '-', target.lower())}.yaml"
        path.write_text(text)
        checks.append(kubernetes_validate(path, docs, target))
        scannable = [d for d in docs if (d["apiVersion"], d["kind"]) not in SCHEMAS]
        pods = pod_templates(docs) if extra_pods else []
        if pods:  # custom resources' pod templates, as the Pods they become
            pod_path = Path(tmp) / "pods.yaml"
            pod_path.write_text(yaml.safe_dump_all(pods, sort_keys=False))
            checks.append(kubernetes_validate(pod_path, pods, f"{target} (pod templates)"))
        if scannable or pods:
            scan = Path(tmp) / "scan.yaml"
            scan.write_text(yaml.safe_dump_all(scannable + pods, sort_keys=False))
            checks.append(checkov(scan, config, target))
    checks.append(check_custom(docs, target))
    odd = unknown_kinds(docs)
    if odd:
        checks.append(Check(target, "kinds", False, len(odd), f"no schema for {odd}"))
    return checks


def pod_templates(docs: list[dict]) -> list[dict]:
    pods = []
    for d in docs:
        if d.get("kind") != "PyTorchJob":
            continue
        for role, spec in d["spec"]["pytorchReplicaSpecs"].items():
            meta = dict(spec["template"].get("metadata", {}))
            meta.update(name=f"{d['metadata']['name']}-{role.lower()}-0",
                        namespace=d["metadata"].get("namespace", "default"))  # fmt: skip
            pod_spec = {**spec["template"]["spec"],
                        "restartPolicy": spec.get("restartPolicy", "OnFailure")}  # fmt: skip
            pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec})
    return pods


# --- targets ----------------------------------------------------------------------------------


def render_chart(values: str | None, namespace: str = "mouthmap") -> subprocess.CompletedProcess:
    cmd = [tool("helm"), "template", "mm", str(CHART), "--namespace", namespace]
    if values:
        cmd += ["--values", str(CHART / values)]
    return run(cmd)


def chart_checks(only: list[str] | None = None) -> list[Check]:
    checks = []
    for name, values in VALUES.items():
        if only and name not in only:
            continue
        target = f"chart[{name}]"
        lint = [tool("helm"), "lint", "--strict", str(CHART)] + (
            ["--values", str(CHART / values)] if values else []
        )
        proc = run(lint)
        errs = [ln for ln in proc.stdout.splitlines() if ln.startswith(("[ERROR]", "[WARNING]"))]
        checks.append(Check(target, "helm lint --strict", proc.returncode == 0 and not errs,
                            len(errs) + (proc.returncode != 0),
                            "\n".join(errs) or proc.stderr[-800:]))  # fmt: skip
        proc = render_chart(values)
        if proc.returncode != 0:
            checks.append(Check(target, "helm template", False, 1, proc.stderr[-2000:]))
            continue
        checks.append(Check(target, "helm template", True, 0,
                            f"{len(docs_of(proc.stdout))} resources"))  # fmt: skip
        checks += validate_manifests(proc.stdout, target, CHART / ".checkov.yaml")
    return checks


def infra_checks() -> list[Check]:
    checks = []
    config = INFRA / ".checkov.yaml"
    for rel in LOCAL_KUSTOMIZATIONS:
        proc = run([tool("kubectl"), "kustomize", str(INFRA / rel)])
        target = f"infra[{rel}]"
        if proc.returncode != 0:
            checks.append(Check(target, "kubectl kustomize", False, 1, proc.stderr[-2000:]))
            continue
        checks.append(Check(target, "kubectl kustomize", True, 0))
        checks += validate_manifests(proc.stdout, target, config)
    for rel in MANIFEST_DIRS:
        files = sorted((INFRA / rel).glob("*.yaml"))
        text = "\n---\n".join(f.read_text() for f in files)
        checks += validate_manifests(text, f"infra[{rel}]", config, extra_pods=True)
    checks.append(check_pins())
    return checks


def check_pins() -> Check:
    """Every remote base is pinned to the version in versions.env, never a branch."""
    pins = dict(
        ln.split("#")[0].strip().split("=", 1)
        for ln in (INFRA / "cluster" / "versions.env").read_text().splitlines()
        if "=" in ln.split("#")[0]
    )
    errors = []
    want = {
        "kubeflow-pipelines": pins["KFP_VERSION"],
        "training-operator": pins["TRAINING_OPERATOR_VERSION"],
    }
    for sub, version in want.items():
        k = yaml.safe_load((INFRA / "cluster" / sub / "kustomization.yaml").read_text())
        for res in k.get("resources", []):
            ref = re.search(r"[?&]ref=([^&]+)", res)
            if not ref:
                errors.append(f"{sub}: {res} is not pinned (no ?ref=)")
            elif ref.group(1) != version:
                errors.append(f"{sub}: {res} pins {ref.group(1)}, versions.env says {version}")
    install = (INFRA / "cluster" / "install.sh").read_text()
    if "KFP_VERSION" not in install:
        errors.append("install.sh does not use KFP_VERSION")
    mlflow = (INFRA / "cluster" / "mlflow" / "mlflow.yaml").read_text()
    if f"mlflow:{pins['MLFLOW_VERSION']}" not in mlflow:
        errors.append(f"mlflow.yaml does not run MLflow {pins['MLFLOW_VERSION']}")
    pg = yaml.safe_load((INFRA / "cluster" / "mlflow" / "kustomization.yaml").read_text())
    if {"name": "postgres", "newTag": pins["POSTGRES_VERSION"]} not in pg.get("images", []):
        errors.append(f"mlflow kustomization does not pin postgres {pins['POSTGRES_VERSION']}")
    return Check("infra[versions.env]", "pins", not errors, len(errors), "\n".join(errors))


def yamllint_checks() -> list[Check]:
    """yamllint over the YAML we write: infra/ and the chart's values; templates are Go
    templates, not YAML, so their rendered output is linted instead."""
    config = str(ROOT / ".yamllint.yaml")
    files = sorted(str(p) for p in INFRA.rglob("*.yaml")) + [
        str(CHART / "Chart.yaml"),
        str(CHART / "values.yaml"),
    ]
    files += sorted(str(p) for p in (CHART / "ci").glob("*.yaml"))
    checks = []
    proc = run([tool("yamllint"), "-c", config, "-f", "parsable", *files])
    errs = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    checks.append(Check("yaml files", "yamllint", proc.returncode == 0 and not errs, len(errs),
                        "\n".join(errs) or f"{len(files)} files"))  # fmt: skip
    for name, values in VALUES.items():
        rendered = render_chart(values)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(rendered.stdout)
        proc = run([tool("yamllint"), "-c", config, "-f", "parsable", f.name])
        os.unlink(f.name)
        errs = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        ok = proc.returncode == 0 and not errs
        checks.append(Check(f"chart[{name}] rendered", "yamllint", ok,
                            len(errs), "\n".join(errs)))  # fmt: skip
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", default="all",
                    choices=["chart", "infra", "yamllint", "all", "file"])  # fmt: skip
    ap.add_argument("--file", type=Path, help="with `file`: validate this manifest stream")
    ap.add_argument("--values", action="append", choices=list(VALUES), help="chart values set(s)")
    ap.add_argument("--json", action="store_true", help="one JSON list of checks on stdout")
    args = ap.parse_args(argv)
    checks: list[Check] = []
    if args.what in ("chart", "all"):
        checks += chart_checks(args.values)
    if args.what in ("infra", "all"):
        checks += infra_checks()
    if args.what in ("yamllint", "all"):
        checks += yamllint_checks()
    if args.what == "file":
        if args.file is None:
            ap.error("file needs --file PATH")
        checks += validate_manifests(args.file.read_text(), str(args.file),
                                     INFRA / ".checkov.yaml", extra_pods=True)  # fmt: skip
    if args.json:
        print(json.dumps([asdict(c) for c in checks]))
    else:
        for c in checks:
            print(f"{'ok ' if c.ok else 'FAIL'} {c.target:<42} {c.tool:<20} errors={c.errors}")
            if c.detail and not c.ok:
                print("     " + c.detail.replace("\n", "\n     "))
        bad = sum(not c.ok for c in checks)
        print(f"checks: {len(checks) - bad} ok, {bad} failed")
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
