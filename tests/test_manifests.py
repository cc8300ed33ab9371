"""Every Kubernetes manifest Accordion ships or generates validates offline against the OpenAPI schema
of a current Kubernetes release (kubernetes-validate, strict: unknown fields are errors)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from accordion.config import ClusterConfig, parse_config
from accordion.paths import ClusterPaths
from accordion.providers.base import Bind, NodeSpec
from accordion.providers.kubernetes import KubernetesProvider

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
VERSION = "1.37.0"


def shipped() -> list[dict]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


@pytest.mark.parametrize("doc", shipped(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_shipped_manifest_is_valid(doc):
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_invalid_manifests_are_caught():
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "imagee": "x"}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSION, strict=True)


def test_shipped_pieces_fit_together():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in shipped()}
    config = parse_config(yaml.safe_load(docs["ConfigMap", "accordion-config"]["data"]["accordion.yaml"]))
    assert config.provider == "kubernetes"
    head = docs["Deployment", f"{config.name}-head"]["spec"]["template"]["spec"]
    assert ("Service", config.kubernetes.head_address) in docs
    binding = docs["RoleBinding", "accordion"]
    assert binding["roleRef"]["name"] == "accordion" and ("Role", "accordion") in docs
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": head["serviceAccountName"]}]
    assert not any(kind == "ClusterRole" for kind, _ in docs)
    assert not any(kind == "Secret" for kind, _ in docs)  # the munge key is generated, never shipped


def test_generated_objects_are_valid(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path))
    config = ClusterConfig.model_validate({"name": "kc", "provider": "kubernetes", "kubernetes": {"namespace": "hpc"}})
    p = KubernetesProvider(config, ClusterPaths("kc"))
    p._owner_ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "accordion-kc", "uid": "0b6b0e8e-1f0c-4d1e-9d8e-2d9a1f6a7c11", "controller": True, "blockOwnerDeletion": True}
    spec = NodeSpec("hpc-node-0", 2, 1024, ["/usr/sbin/slurmd", "-D"], [Bind("/run/m", "/run/munge", head_only=True), Bind("/srv/accordion/kc", "/srv/accordion/kc", readonly=False)],
                    {"SLURM_AUTH_SOCKET": "/run/accordion/kc/munge/munge.socket.2"}, {"/etc/munge-key/munge.key": "/k"})
    kubernetes_validate.validate(p.pod_manifest(spec), VERSION, strict=True)
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "hpc-node-0.1", "namespace": "hpc"}, "involvedObject": {"kind": "Pod", "name": "hpc-node-0"},
             "reason": "NodeRequested", "message": "m", "type": "Normal", "source": {"component": "accordion"}}
    kubernetes_validate.validate(event, VERSION, strict=True)
