"""deploy/k8s: every manifest is valid against the Kubernetes schemas bundled by
kubernetes-validate (offline, no cluster), holds the production rules the issue asks for,
sets only environment variables idhub reads, and ships exactly the repository's policies."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from idhub.config import load_settings
from tests.conftest import REPO

K8S = REPO / "deploy" / "k8s"
KUBERNETES = "1.37"


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    return docs


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in _documents()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]  # fmt: skip
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def _pod_specs() -> list[dict[str, Any]]:
    return [_one("Deployment")["spec"]["template"]["spec"], _one("Job")["spec"]["template"]["spec"]]


def test_every_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    docs = _documents()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Job",
         "PodDisruptionBudget", "Secret", "Service"]
    )  # fmt: skip
    for doc in docs:
        # Strict: a misspelt or misplaced field is an error, not silently ignored.
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_validator_can_fail() -> None:
    deployment = _one("Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    typo = {**container, "readinessprobe": container["readinessProbe"]}
    spec = {**deployment["spec"]["template"]["spec"], "containers": [typo]}
    misspelt = {**deployment, "spec": {**deployment["spec"], "template": {"spec": spec}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES, strict=True)


def test_pods_run_unprivileged_on_a_read_only_root_with_probes_and_resources() -> None:
    for pod in _pod_specs():
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] >= 1000
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys()
            assert "memory" in resources["limits"]
            # What idhub writes (var_dir, xmlsec1's temporary files) is on emptyDir volumes.
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/var/lib/idhub", "/tmp"} <= mounts
    server = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert server["startupProbe"]["httpGet"]["path"] == "/healthz"
    # Migrations belong to the Job, so a pod of the old release never meets a newer schema
    # it cannot migrate "back" to.
    assert "--no-migrate" in server["args"]
    assert _one("Job")["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    assert _one("Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb, hpa = _one("PodDisruptionBudget"), _one("HorizontalPodAutoscaler")
    labels = _one("Deployment")["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    assert _one("Service")["spec"]["selector"] == labels
    assert hpa["spec"]["scaleTargetRef"]["name"] == "idhub" and hpa["spec"]["minReplicas"] >= 2


def _read_variables() -> set[str]:
    """Every environment variable name idhub's settings reader mentions."""
    names: set[str] = set()
    for path in (REPO / "src" / "idhub" / "config").glob("*.py"):
        names |= set(re.findall(r'"((?:IDHUB|PROMETHEUS)_[A-Z0-9_]+)"', path.read_text()))
    return names


def test_every_environment_variable_set_is_one_idhub_reads() -> None:
    secret = _one("Secret")["stringData"]
    env: dict[str, str] = {}
    for pod in _pod_specs():
        for container in pod["containers"]:
            for item in container["env"]:
                assert item["name"] in _read_variables(), f"idhub does not read {item['name']}"
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "idhub-secrets" and ref["key"] in secret
                    env[item["name"]] = secret[ref["key"]]
                else:
                    env[item["name"]] = item["value"]
    # And they take effect: the ConfigMap's idhub.toml with this environment is valid settings.
    config = _one("ConfigMap", "idhub-config")["data"]["idhub.toml"]
    env["IDHUB_SECRET_KEY"] = "k" * 43
    settings = load_settings(_write(config), env=env)
    assert settings.server.log_format == "json" and settings.server.workers == 2
    assert settings.database.url == secret["IDHUB_DATABASE_URL"]
    assert settings.metrics.token is not None and settings.production
    assert str(settings.policy.dir) == "/etc/idhub/policies"
    assert "IDHUB_CONFIG" in env and env["IDHUB_CONFIG"] == "/etc/idhub/idhub.toml"


def _write(text: str) -> Path:
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False, encoding="utf-8")
    with handle:
        handle.write(text)
    return Path(handle.name)


def test_the_policies_configmap_mounts_exactly_the_repository_policies(tmp_path: Path) -> None:
    data = _one("ConfigMap", "idhub-policies")["data"]
    volume = next(
        v for v in _one("Deployment")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "policies"
    )  # fmt: skip
    items = {item["key"]: item["path"] for item in volume["configMap"]["items"]}
    assert set(items) == set(data), "run python3 deploy/k8s/policies_configmap.py"
    mounted = {path: data[key] for key, path in items.items()}
    policies = REPO / "policies"
    shipped = {
        p.relative_to(policies).as_posix(): p.read_text(encoding="utf-8")
        for p in policies.rglob("*") if p.is_file()
    }  # fmt: skip
    assert mounted == shipped, "run python3 deploy/k8s/policies_configmap.py"
    # Laid out as the kubelet would, the files are a policy idhub loads.
    for path, text in mounted.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text, encoding="utf-8")
    from idhub.adapters.policy_files import PolicyFiles

    policy, issues = PolicyFiles().load(tmp_path)
    assert policy.rules and not [i for i in issues if i.level == "error"]
