"""charts/mouthmap: lint, render, validate and scan it for every values set, and check that the
rendered resources do what a cluster operator installing it expects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from _k8s import CHART, by_kind, failures, helm, k8s_bin, pod_specs, render, validate  # noqa: F401

VALUES = {
    "default": None,
    "gpu": "ci/gpu-values.yaml",
    "minimal": "ci/minimal-values.yaml",
    "cpu": "ci/cpu-values.yaml",
}


@pytest.mark.parametrize("name", list(VALUES))
def test_chart_passes_lint_validation_and_policy_scan(k8s_bin, name):  # noqa: F811
    checks = validate(k8s_bin, "chart", "--values", name)
    tools = {c["tool"] for c in checks}
    assert {"helm lint --strict", "helm template", "kubernetes-validate", "checkov",
            "crd-schema"} <= tools  # fmt: skip
    assert all(c["ok"] and c["errors"] == 0 for c in checks), failures(checks)


def test_rendered_chart_and_yaml_files_pass_yamllint(k8s_bin):  # noqa: F811
    checks = validate(k8s_bin, "yamllint")
    assert len(checks) == 1 + len(VALUES)
    assert all(c["ok"] for c in checks), failures(checks)


def test_default_install_has_every_part_of_the_platform(k8s_bin):  # noqa: F811
    docs = render(k8s_bin)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == sorted([
        "CronJob", "Deployment", "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy",
        "Pod", "PodDisruptionBudget", "Service", "ServiceAccount",
    ])  # fmt: skip
    triton = next(
        d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("triton")
    )
    svc = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"].endswith("triton"))
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
        "http": 8000, "grpc": 8001, "metrics": 8002,
    }  # fmt: skip
    pod = triton["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "build-repo"]
    fetch, build = pod["initContainers"]
    env = {e["name"]: e.get("value") for e in fetch["env"]}
    assert env["MODEL_URI"] == "models:/mouthmap@champion"
    assert "mlflow artifacts download" in fetch["args"][0]
    assert "mouthmap serve build-repo" in build["args"][0]
    main = pod["containers"][0]
    assert main["command"] == ["tritonserver"]
    assert "--model-repository=/work/models" in main["args"]
    assert main["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # the stream model samples request features for the drift job
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["MOUTHMAP_DRIFT_SINK"] == "s3://mouthmap-drift/requests"
    proxy = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("proxy"))
    container = proxy["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mouthmap-proxy"]
    # the proxy's own parser accepts the chart's command line (an unknown option fails it)
    line = [str(Path(sys.executable).parent / container["command"][0]), *container["args"]]
    parsed = subprocess.run([*line, "--help"], capture_output=True, text=True, timeout=60)
    assert parsed.returncode == 0, parsed.stderr[-1500:]
    cron = by_kind(docs, "CronJob")[0]
    job = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["mouthmap", "drift", "check"]
    assert "--since=1h" in job["args"] and any(a.startswith("--mlflow-uri=") for a in job["args"])
    hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == triton["metadata"]["name"]
    assert "replicas" not in triton["spec"]  # the HPA owns the replica count


def test_helm_test_hook_checks_health_and_transcribes_a_sample(k8s_bin):  # noqa: F811
    pod = next(d for d in render(k8s_bin) if d["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "/v2/health/ready" in script and "/v2/models/mouthmap_stream/ready" in script
    assert 'mouthmap stream --url "$TRITON_GRPC"' in script
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["TRITON_GRPC"].endswith(":8001")
    assert env["SAMPLE_VIDEO"].endswith(".mp4")


def test_gpu_values_put_triton_on_gpu_nodes_with_monitoring(k8s_bin):  # noqa: F811
    docs = render(k8s_bin, VALUES["gpu"])
    triton = next(
        d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("triton")
    )
    pod = triton["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["initContainers"][1]["args"][-2:] == ["--device", "gpu"]
    env = {e["name"]: e.get("value") for e in pod["initContainers"][0]["env"]}
    assert env["MODEL_URI"] == "s3://mouthmap-models/releases/mouthmap-student/0.1.0"
    kinds = {d["kind"] for d in docs}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    rules = by_kind(docs, "PrometheusRule")[0]["spec"]["groups"]
    alerts = {r["alert"] for g in rules for r in g["rules"]}
    assert {"MouthMapInputDrift", "MouthMapTritonDown", "MouthMapQueueLatencyHigh"} <= alerts
    ingress = by_kind(docs, "Ingress")[0]
    assert ingress["spec"]["tls"][0]["secretName"] == "mouthmap-tls"
    # the CPU default has no GPU anywhere
    default = render(k8s_bin)
    assert "nvidia.com/gpu" not in json.dumps(default)


def test_the_cpu_flavour_serves_with_the_triton_cpu_image(k8s_bin):  # noqa: F811
    docs = render(k8s_bin, VALUES["cpu"])
    triton = next(
        d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("triton")
    )
    pod = triton["spec"]["template"]["spec"]
    main = pod["containers"][0]
    assert main["image"].endswith(":0.1.0-cpu")
    assert main["command"] == ["mouthmap", "serve", "run", "/work/models"]
    # the CLI accepts the chart's command line (an unknown option would fail it)
    line = [str(Path(sys.executable).parent / "mouthmap"), *main["command"][1:], *main["args"]]
    parsed = subprocess.run([*line, "--help"], capture_output=True, text=True, timeout=60)
    assert parsed.returncode == 0, parsed.stderr[-1500:]
    build = next(c for c in pod["initContainers"] if c["name"] == "build-repo")
    backend = [
        a for i, a in enumerate(build["args"]) if build["args"][i - 1] == "--encoder-backend"
    ]
    assert backend[-1] == "python"  # pytriton's server has no ONNX Runtime backend
    bad = helm(k8s_bin, "template", "r", str(CHART), "--set", "triton.flavour=cpu",
               "--set", "triton.gpu.enabled=true")  # fmt: skip
    assert bad.returncode != 0 and "has no GPU support" in bad.stderr


def test_minimal_values_install_triton_alone(k8s_bin):  # noqa: F811
    docs = render(k8s_bin, VALUES["minimal"])
    names = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert names == [
        "Deployment/mm-mouthmap-triton", "NetworkPolicy/mm-mouthmap-triton",
        "Service/mm-mouthmap-triton", "ServiceAccount/mm-mouthmap",
    ]  # fmt: skip
    assert by_kind(docs, "Deployment")[0]["spec"]["replicas"] == 1


@pytest.mark.parametrize("name", list(VALUES))
def test_every_container_is_non_root_read_only_and_limited(k8s_bin, name):  # noqa: F811
    for resource, spec in pod_specs(render(k8s_bin, VALUES[name])):
        assert spec["securityContext"]["runAsNonRoot"] is True, resource
        assert spec["automountServiceAccountToken"] is False, resource
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{resource}/{c['name']}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), where


def test_secrets_are_mounted_as_files_never_inlined(k8s_bin):  # noqa: F811
    docs = render(k8s_bin, VALUES["gpu"])  # the values set that uses Secrets
    assert not by_kind(docs, "Secret")
    text = json.dumps(docs)
    assert "secretKeyRef" not in text  # not even as env references: files only
    for resource, spec in pod_specs(docs):
        secrets = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        if resource.startswith(("Deployment/mm-mouthmap-triton", "CronJob")):
            assert secrets == {"mouthmap-s3", "mouthmap-mlflow"}, resource
            c = (spec.get("initContainers") or spec["containers"])[0]
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["AWS_SHARED_CREDENTIALS_FILE"] == "/var/run/secrets/mouthmap/s3/credentials"
        if resource.startswith("Deployment/mm-mouthmap-proxy"):  # the browsers' token
            assert secrets == {"mouthmap-proxy"}, resource
            env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
            assert env["MOUTHMAP_PROXY_TOKEN_FILE"] == "/var/run/secrets/mouthmap/proxy/token"


def test_image_digest_pins_by_content(k8s_bin):  # noqa: F811
    digest = "sha256:" + "a" * 64
    docs = render(k8s_bin, None, f"triton.image.digest={digest}")
    triton = next(
        d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("triton")
    )
    assert triton["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"mouthmap/triton@{digest}"
    )


@pytest.mark.parametrize(
    "setting, message",
    [
        ("triton.replicas=two", "/triton/replicas"),
        ("model.source=hub", "/model/source"),
        ("model.source=s3", "/model/s3Uri"),
        ("securityContext.allowPrivilegeEscalation=true", "allowPrivilegeEscalation"),
        ("drift.sampleRate=2", "/drift/sampleRate"),
        ("triton.gpu.count=0", "/triton/gpu/count"),
        ("triton.unknownKey=1", "unknownKey"),
    ],
)
def test_values_schema_rejects_bad_values_with_the_field_named(k8s_bin, setting, message):  # noqa: F811
    proc = helm(k8s_bin, "template", "mm", str(CHART), "--set", setting)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_notes_tell_how_to_reach_and_check_the_release(k8s_bin):  # noqa: F811
    proc = helm(k8s_bin, "install", "mm", str(CHART), "--dry-run=client", "-n", "lips")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "models:/mouthmap@champion" in notes
    assert "kubectl -n lips port-forward svc/mm-mouthmap-triton 8001" in notes
    assert "helm test mm -n lips" in notes


def test_chart_knows_every_drift_feature_the_monitor_computes():
    from mouthmap.monitor.features import ALL_FEATURES

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["drift"]["properties"]["exclude"]["items"]["enum"] == list(
        ALL_FEATURES
    )
