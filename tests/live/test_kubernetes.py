"""Appendix C with Pods: the Kubernetes provider end to end, through a real HTTP API stand-in (kmock)
and a kubelet stand-in that runs the Pods the provider created with `podman kube play`, from the node
image built by scripts/build-images.sh. No Kubernetes API server can run here: see the README."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from accordion.cluster import Cluster
from accordion.paths import ClusterPaths
from tests.k8s.apiserver import KMockThread
from tests.k8s.kubelet import BRIDGE_IP, ClusterNetwork, Kubelet
from tests.live.cluster import LiveCluster, wait_for

REPO = Path(__file__).resolve().parents[2]
NS = "hpc"
DONE = {"COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL"}


def podman_env() -> dict[str, str]:
    out = subprocess.run(["bash", str(REPO / "scripts/build-images.sh"), "--print-env"], capture_output=True, text=True, check=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'\"")
    return env


def node_image(env) -> str:
    version = next(line.split('"')[1] for line in (REPO / "pyproject.toml").read_text().splitlines() if line.startswith("version"))
    image = f"localhost/accordion-node:{version}"
    if subprocess.run(["podman", "image", "exists", image], env=env).returncode != 0:
        if os.environ.get("ACCORDION_REQUIRE_LIVE"):
            raise AssertionError(f"{image} is missing: scripts/test.sh builds it with scripts/build-images.sh")
        pytest.skip(f"{image} not built (scripts/build-images.sh)")
    return image


def role_rules() -> dict[str, set[str]]:
    role = yaml.safe_load((REPO / "deploy/kubernetes/role.yaml").read_text())
    rules: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""], rule
        for resource in rule["resources"]:
            rules.setdefault(resource, set()).update(rule["verbs"])
    return rules


@pytest.fixture
def kube(tmp_path):
    env = podman_env()
    image = node_image(env)
    tag = uuid.uuid4().hex[:6]
    network = ClusterNetwork(f"kube-{tag}", NS, tmp_path / "net")
    network.setup()
    server = KMockThread().start()
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(server.kubeconfig(tmp_path / "kubeconfig")), client_configuration=cfg)
    api_client = client.ApiClient(cfg)
    api_client.user_agent = "kubelet-stand-in"  # kept out of the controller's recorded calls
    kubelet = Kubelet(client.CoreV1Api(api_client), NS, network, tmp_path / "pods", env).start()
    yield {"server": server, "kubelet": kubelet, "network": network, "image": image, "tag": tag, "kubeconfig": tmp_path / "kubeconfig", "env": env}
    kubelet.stop()
    server.stop()
    network.teardown()


def test_appendix_c_walkthrough_with_pods(kube, tmp_path):
    c = LiveCluster(f"k-{kube['tag']}", {
        "provider": "kubernetes",
        "kubernetes": {"namespace": NS, "kubeconfig": str(kube["kubeconfig"]), "image": kube["image"],
                       "head_address": BRIDGE_IP, "network_namespace": kube["network"].netns},
        "nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 2, "cpus": 1, "memory_mb": 256, "idle_timeout": 5},
                     {"name": "broken", "max_nodes": 1, "cpus": 1, "memory_mb": 256, "image": "localhost/accordion-missing:0"}],
        "controller": {"max_start_failures": 1},
    }, tmp_path)
    server, kubelet, env = kube["server"], kube["kubelet"], kube["env"]
    try:
        c.up()
        assert c.containers() == set()
        job = c.sbatch("srun hostname", "-N2", "-o", str(c.shared / "out.txt"), name="two")
        # Job submitted -> Pods created through the API -> containers from the node image -> slurmd registers.
        wait_for(lambda: set(kubelet.played) >= {"hpc-node-0", "hpc-node-1"}, 60, "two Pods created through the API")
        state = c.wait_job(job, DONE, 180)
        out = (c.shared / "out.txt").read_text() if (c.shared / "out.txt").exists() else "no output"
        assert state == "COMPLETED", out
        assert sorted((c.shared / "out.txt").read_text().split()) == ["hpc-node-0", "hpc-node-1"]
        running = subprocess.run(["podman", "ps", "--format", "{{.Names}} {{.Image}}"], capture_output=True, text=True, env=env).stdout
        assert f"hpc-node-0-node {kube['image']}" in running
        # Idle Pods deleted through the API -> containers gone.
        wait_for(lambda: kubelet.pods == {}, 60, "idle Pods deleted and their containers removed")
        names = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, env=env).stdout.split()
        assert not [n for n in names if n.startswith("hpc-node-")]
        calls = server.verbs(exclude_agent="kubelet-stand-in")
        assert "delete" in calls["pods"] and "create" in calls["pods"] and "watch" in calls["pods"]
        events = {e.reason for e in kubelet.api.list_namespaced_event(NS).items}
        assert {"NodeRequested", "NodeRegistered", "NodeRemoved"} <= events, events
        status = c.status()
        assert status["nodesets"][0]["name"] == "compute"
        # A Pod whose image cannot be pulled: reported to Slurm and given up (max_start_failures: 1), with
        # the kubelet's reason in the event.
        c.sbatch("true", "-p", "broken", name="doomed")
        try:
            failed = wait_for(lambda: [e for e in c.events() if e["kind"] == "failed" and e.get("node") == "broken-0"], 60, "the broken Pod to be given up")
        except AssertionError:
            log = (Path("/var/lib/accordion") / c.name / "logs" / "controller.log").read_text()[-3000:]
            raise AssertionError(log) from None
        assert "ErrImagePull" in failed[0]["reason"], failed
        assert "ErrImagePull" in c.sh("scontrol show node broken-0 | grep Reason")
        wait_for(lambda: c.node_states("broken").get("broken-0") == "failed", 10, "broken-0 shown as failed")
        assert {e.reason for e in kubelet.api.list_namespaced_event(NS).items} >= {"NodeFailed"}
    finally:
        c.down()
    # RBAC: every call the controller (and `accordion up`/`down`) made is granted by the chart's Role,
    # and the Role grants nothing that was not used.
    assert server.verbs(exclude_agent="kubelet-stand-in") == role_rules()
    assert not [n for n in subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, env=env).stdout.split() if n.startswith("hpc-node-")]


def replace_head(c: LiveCluster) -> None:
    """What replacing the head Pod does when its state is on an emptyDir (deploy/kubernetes/head.yaml):
    munged, slurmctld and the controller end and their state is gone, while the cluster's Kubernetes
    objects (ConfigMap, Service, Secret) and node Pods remain; then the new head runs `accordion up`."""
    head = Cluster.load(c.name)
    head.stop_controller()
    head.scheduler.teardown()
    for d in (head.paths.state, head.paths.run):
        shutil.rmtree(d)
    c.up()


def test_a_head_restarted_without_its_state_runs_new_jobs(kube, tmp_path):
    c = LiveCluster(f"r-{kube['tag']}", {
        "provider": "kubernetes",
        "kubernetes": {"namespace": NS, "kubeconfig": str(kube["kubeconfig"]), "image": kube["image"],
                       "head_address": BRIDGE_IP, "network_namespace": kube["network"].netns},
        "nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 2, "cpus": 1, "memory_mb": 256, "idle_timeout": 5}],
        # Pod starts took up to ~40 s here on a loaded machine; a Pod with the wrong key fails at once
        # anyway (slurmd exits), so this only keeps slowness from passing for the fault.
        "controller": {"resume_timeout": 90},
    }, tmp_path)
    server, kubelet = kube["server"], kube["kubelet"]
    paths = ClusterPaths(c.name)
    key = paths.state / "munge" / "munge.key"
    try:
        c.up()
        for run in ("before", "after"):
            job = c.sbatch("srun hostname", "-N2", "-o", str(c.shared / f"{run}.txt"), name=run)
            try:
                state = c.wait_job(job, DONE, 300)
            except AssertionError:
                raise AssertionError((paths.logs / "controller.log").read_text()[-3000:]) from None
            out = c.shared / f"{run}.txt"
            assert state == "COMPLETED", out.read_text() if out.exists() else "no output"
            assert sorted(out.read_text().split()) == ["hpc-node-0", "hpc-node-1"]
            # The first head's Pods are gone before it is replaced: a Pod still there when slurmctld
            # (22.05) starts has its name resolved and that address kept, so a later Pod of the same name
            # (another IP) is not reached; a problem of its own, not of the key.
            wait_for(lambda: kubelet.pods == {}, 60, "idle Pods deleted")
            if run == "before":
                first_key = key.read_bytes()
                replace_head(c)
                # A new head, a new key, while the cluster's Secret still holds the first: Pods given
                # that one never register, and the next job never runs.
                assert key.read_bytes() != first_key
    finally:
        c.down()
    rules = role_rules()
    assert all(verbs <= rules[resource] for resource, verbs in server.verbs(exclude_agent="kubelet-stand-in").items())
