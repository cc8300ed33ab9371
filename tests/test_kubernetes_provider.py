"""The Kubernetes provider against a real HTTP API stand-in (kmock), with faults injected.

What a kubelet would do (run the Pod, report its status) is played here by patching Pod status through
the API; tests/live/test_kubernetes.py runs the Pods for real with podman.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import threading
import time
from pathlib import Path

import kmock
import pytest
import yaml

from accordion.config import ClusterConfig
from accordion.paths import ClusterPaths
from accordion.providers.base import Bind, NodeSpec, ProviderError
from accordion.providers.kubernetes import EVENT_BACKLOG, KubernetesProvider
from accordion.sh import wait_until
from tests.k8s.apiserver import KMockThread

NS = "hpc"
ROLE = Path(__file__).resolve().parents[1] / "deploy/kubernetes/role.yaml"


@pytest.fixture
def server():
    with KMockThread() as km:
        yield km


def head(server, tmp_path, key: bytes, keyfile: str = "munge.key") -> KubernetesProvider:
    """The provider as a head's controller makes it, with the munge key that head generated."""
    config = ClusterConfig.model_validate({
        "name": "kc", "provider": "kubernetes",
        "kubernetes": {"namespace": NS, "kubeconfig": str(server.kubeconfig(tmp_path / "kubeconfig")), "image": "localhost/accordion-node:test"},
        "nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 3, "cpus": 2, "memory_mb": 512},
                     {"name": "big", "max_nodes": 1, "cpus": 4, "memory_mb": 2048, "image": "localhost/other:1"}],
    })
    p = KubernetesProvider(config, ClusterPaths("kc"))
    p.key = tmp_path / keyfile
    p.key.write_bytes(key)
    p.setup()
    return p


@pytest.fixture
def provider(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path / "state"))
    p = head(server, tmp_path, b"k" * 1024)
    yield p
    p.close()


def spec(p, name="hpc-node-0", cpus=2, memory=512):
    return NodeSpec(name, cpus, memory, ["/usr/sbin/slurmd", "-D", "-N", name],
                    [Bind("/run/x", "/run/munge", head_only=True), Bind("/srv/accordion/kc", "/srv/accordion/kc", readonly=False)],
                    secrets={"/etc/munge-key/munge.key": str(p.key)}, files={"/usr/local/libexec/x/hook": "#!/bin/sh\n"})


def pods(p):
    return {x.metadata.name: x for x in p.api.list_namespaced_pod(NS).items}


def wait(predicate, what, timeout=10):
    wait_until(predicate, timeout, f"timed out waiting for {what}", interval=0.05)


def set_status(p, name, status):
    p.api.patch_namespaced_pod_status(name, NS, {"status": status})


def test_pod_spec_maps_the_node_set(provider):
    provider.create(spec(provider))
    provider.create(spec(provider, "big-0", 4, 2048))
    got = pods(provider)
    owner = provider.api.read_namespaced_config_map("accordion-kc", NS)
    for name, cpus, mem, image in (("hpc-node-0", "2", "512Mi", "localhost/accordion-node:test"), ("big-0", "4", "2048Mi", "localhost/other:1")):
        pod = got[name]
        c = pod.spec.containers[0]
        assert c.resources.requests == c.resources.limits == {"cpu": cpus, "memory": mem}
        assert c.image == image
        assert pod.spec.hostname == name and pod.spec.subdomain == "kc-nodes"
        assert [(o.kind, o.name, o.uid) for o in pod.metadata.owner_references] == [("ConfigMap", "accordion-kc", owner.metadata.uid)]
        mounts = {m.mount_path for m in c.volume_mounts}
        assert mounts == {"/etc/munge-key", "/srv/accordion/kc", "/usr/local/libexec/x"}  # the head's socket is not offered to Pods
        # The key readable by root only, the hook by everyone (it runs as the job's user).
        items = {i.key: i.mode for v in pod.spec.volumes if v.secret for i in v.secret.items}
        assert items == {"munge.key": 0o400, "hook": 0o755}
    secret = provider.api.read_namespaced_secret("kc-secrets", NS)
    assert set(secret.data) == {"munge.key", "hook"} and secret.metadata.owner_references[0].name == "accordion-kc"
    assert base64.b64decode(secret.data["hook"]) == b"#!/bin/sh\n"
    svc = provider.api.read_namespaced_service("kc-nodes", NS)
    assert svc.spec.cluster_ip == "None" and svc.spec.publish_not_ready_addresses is True
    assert provider.address("hpc-node-0") == "hpc-node-0.kc-nodes"


def test_list_follows_pod_status_through_the_watch(provider):
    provider.create(spec(provider))
    wait(lambda: "hpc-node-0" in provider.list(), "the new Pod in the watch cache")
    assert provider.list()["hpc-node-0"].running
    waiting = {"waiting": {"reason": "ErrImagePull", "message": "no such image"}}
    status = {"name": "node", "image": "x", "imageID": "", "ready": False, "restartCount": 0, "state": waiting}
    set_status(provider, "hpc-node-0", {"phase": "Pending", "containerStatuses": [status]})
    wait(lambda: not provider.list()["hpc-node-0"].running, "the failed Pod")
    assert provider.list()["hpc-node-0"].reason == "ErrImagePull: no such image"
    provider.delete("hpc-node-0")
    wait(lambda: "hpc-node-0" not in provider.list(), "the deleted Pod to leave the cache")


def test_server_error_on_create_is_retried_and_makes_one_pod(server, provider):
    # kmock stores the Pod and then answers 500: the case of a create whose answer is lost. The retry
    # meets 409 AlreadyExists and recognises its own Pod.
    server.once("create v1/pods", kmock.KubernetesError(500, "InternalError", "injected"))
    provider.create(spec(provider))
    assert list(pods(provider)) == ["hpc-node-0"]


def test_conflict_with_a_foreign_pod_is_an_error_not_a_takeover(provider):
    provider.api.create_namespaced_pod(NS, {"metadata": {"name": "hpc-node-1", "labels": {"app": "other"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}})
    with pytest.raises(ProviderError, match="not made by this cluster"):
        provider.create(spec(provider, "hpc-node-1"))
    assert pods(provider)["hpc-node-1"].metadata.labels == {"app": "other"}  # left alone


def test_a_foreign_configmap_of_the_clusters_name_is_refused_and_left_alone(server, tmp_path, monkeypatch):
    # Every object of the cluster is owned by that ConfigMap and `down` deletes it: taking over someone
    # else's would delete what they made with it.
    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path / "state"))
    first = head(server, tmp_path, b"k" * 1024)
    first.teardown()
    first.api.create_namespaced_config_map(NS, {"metadata": {"name": "accordion-kc", "labels": {"app": "other"}}, "data": {"x": "1"}})
    with pytest.raises(ProviderError, match="ConfigMap hpc/accordion-kc exists and is not this cluster's"):
        head(server, tmp_path, b"k" * 1024)
    first.teardown()
    assert first.api.read_namespaced_config_map("accordion-kc", NS).data == {"x": "1"}
    first.close()


def test_refused_create_leaves_nothing_half_created(server, provider):
    # kmock stores the Pod before answering with the injected error: the provider must undo it.
    server.once("create v1/pods", kmock.KubernetesError(403, "Forbidden", "injected"))
    with pytest.raises(ProviderError, match="403"):
        provider.create(spec(provider))
    assert pods(provider) == {}


def test_persistent_server_errors_give_up_with_the_status(server, provider, monkeypatch):
    monkeypatch.setattr("accordion.providers.kubernetes.ATTEMPTS", 3)
    server.once("list v1/pods", kmock.KubernetesError(503, "ServiceUnavailable", "injected"), times=3)
    with pytest.raises(ProviderError, match="list Pods: Kubernetes API answered 503"):
        provider.teardown()


def test_slow_api_is_retried(server, provider, monkeypatch):
    import asyncio

    monkeypatch.setattr("accordion.providers.kubernetes.TIMEOUT", 0.5)
    server.once("delete v1/pods", lambda: asyncio.sleep(1.5), op=">>")
    provider.create(spec(provider))
    provider.delete("hpc-node-0")  # the first attempt times out; the retry deletes (or finds it gone)
    assert pods(provider) == {}


def test_watch_expiry_410_relists(server, provider):
    gone = {"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old resource version"}}
    server.once("watch v1/pods", (gone,))  # the provider's first watch expires at once
    provider.create(spec(provider))
    wait(lambda: "hpc-node-0" in provider.list(), "the first Pod")
    lists = lambda: sum(1 for r in server.call(lambda h: list(h)) if r.action == kmock.action.LIST and r.resource is not None and r.resource.plural == "pods")  # noqa: E731
    wait(lambda: lists() >= 2, "a relist after the 410")
    provider.create(spec(provider, "hpc-node-1"))
    provider.api.delete_namespaced_pod("hpc-node-0", NS)  # behind the provider's back: only the watch tells
    wait(lambda: set(provider.list()) == {"hpc-node-1"}, "the cache to follow the new watch")


def test_a_restarted_head_gives_new_pods_its_own_key(server, provider, tmp_path):
    # A head whose state did not survive (emptyDir) generates a new munge key; the cluster's Secret,
    # made by the earlier head, outlives it. A node given the earlier key never registers.
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(tmp_path / "kubeconfig"), client_configuration=cfg)
    reader = client.ApiClient(cfg)
    reader.user_agent = "test-reader"  # kept out of the provider's recorded calls

    def secret() -> client.V1Secret:
        return client.CoreV1Api(reader).read_namespaced_secret("kc-secrets", NS)

    provider.create(spec(provider))
    assert base64.b64decode(secret().data["munge.key"]) == b"k" * 1024
    provider.close()
    restarted = head(server, tmp_path, b"n" * 1024, "new-munge.key")
    try:
        restarted.create(spec(restarted, "hpc-node-1"))
        assert base64.b64decode(secret().data["munge.key"]) == b"n" * 1024
        assert secret().metadata.owner_references[0].name == "accordion-kc"
        restarted.create(spec(restarted, "hpc-node-2"))  # and it stays so
        assert base64.b64decode(secret().data["munge.key"]) == b"n" * 1024
    finally:
        restarted.close()
    # With the verbs the Role grants on Secrets, no more (the live test checks the whole Role).
    granted = {v for rule in yaml.safe_load(ROLE.read_text())["rules"] if "secrets" in rule["resources"] for v in rule["verbs"]}
    assert server.verbs(exclude_agent="test-reader")["secrets"] <= granted


def test_teardown_removes_every_object(provider):
    provider.create(spec(provider))
    provider.create(spec(provider, "hpc-node-1"))
    provider.teardown()
    assert pods(provider) == {}
    assert [c.metadata.name for c in provider.api.list_namespaced_config_map(NS).items] == []
    assert provider.api.list_namespaced_secret(NS).items == [] and provider.api.list_namespaced_service(NS).items == []


def test_events_are_mirrored_as_kubernetes_events(provider):
    provider.create(spec(provider))
    wait(lambda: "hpc-node-0" in provider.list(), "the Pod")
    provider.record({"kind": "failed", "node": "hpc-node-0", "reason": "did not register within 30 s"})
    provider.record({"kind": "scaled", "nodeset": "compute", "reason": "pinned to 2 by hand"})
    wait(lambda: len(provider.api.list_namespaced_event(NS).items) == 2, "both events posted")
    events = provider.api.list_namespaced_event(NS).items
    got = {(e.involved_object.kind, e.involved_object.name, e.reason, e.type, e.message) for e in events}
    assert ("Pod", "hpc-node-0", "NodeFailed", "Warning", "hpc-node-0 did not register within 30 s") in got
    assert ("ConfigMap", "accordion-kc", "NodeScaled", "Normal", "pinned to 2 by hand") in got


@pytest.mark.parametrize("kubeconfig, expected", [("/nonexistent", "kubernetes.kubeconfig /nonexistent"), (None, "in-cluster configuration")])
def test_unusable_client_configuration_is_a_clear_error(tmp_path, kubeconfig, expected):
    config = ClusterConfig.model_validate({"name": "kc", "provider": "kubernetes", "kubernetes": {"kubeconfig": kubeconfig}})
    with pytest.raises(ProviderError, match=expected):
        KubernetesProvider(config, ClusterPaths("kc")).setup()


def test_a_hanging_events_endpoint_does_not_hold_up_the_caller(server, provider, caplog):
    # Every create of an Event hangs until released, longer than the client's timeout: each blocking post
    # would hold its caller (the controller's loop) for that timeout.
    release = threading.Event()

    async def hang() -> None:
        while not release.is_set():
            await asyncio.sleep(0.05)

    server.once("create v1/events", hang, op=">>", times=1000)
    t0 = time.monotonic()
    try:
        for i in range(300):  # more than are kept waiting: the rest are dropped, with a warning
            provider.record({"kind": "requested", "node": f"hpc-node-{i % 3}", "reason": f"job {i}"})
            # A blocking post waits out the client's 5 s timeout on the first event already.
            assert time.monotonic() - t0 < 2.5, f"{i + 1} events took {time.monotonic() - t0:.1f} s to record"
    finally:
        release.set()
    assert "dropped" in caplog.text
    provider.close()  # posts what is still queued, for a bounded time
    assert 0 < len(provider.api.list_namespaced_event(NS).items) <= EVENT_BACKLOG


def test_close_posts_the_queued_events(provider):
    provider.record({"kind": "controller", "reason": "stopped"})
    provider.close()  # the last event of a controller that exits is posted, not lost with its thread
    assert [e.message for e in provider.api.list_namespaced_event(NS).items] == ["stopped"]


def test_close_gives_up_on_an_api_that_does_not_answer(server, provider, monkeypatch, caplog):
    monkeypatch.setattr("accordion.providers.kubernetes.EVENT_FLUSH", 0.5)
    release = threading.Event()

    async def hang() -> None:
        while not release.is_set():
            await asyncio.sleep(0.05)

    server.once("create v1/events", hang, op=">>", times=10)
    provider.record({"kind": "controller", "reason": "stopped"})
    t0 = time.monotonic()
    try:
        provider.close()
        # Waiting for the post would take the client's 5 s timeout.
        assert time.monotonic() - t0 < 3, f"close took {time.monotonic() - t0:.1f} s"
    finally:
        release.set()
    assert "1 Kubernetes Events not posted" in caplog.text


def test_an_event_recorded_just_before_the_process_exits_is_posted(provider, tmp_path):
    # What `accordion scale` does: record one event, exit. The poster is a daemon thread (a hung post must
    # not keep a process alive): what it has not posted yet is posted at exit.
    code = (
        "import sys\n"
        "from accordion.config import ClusterConfig\n"
        "from accordion.paths import ClusterPaths\n"
        "from accordion.providers.kubernetes import KubernetesProvider\n"
        "config = ClusterConfig.model_validate({'name': 'kc', 'provider': 'kubernetes', 'kubernetes': {'namespace': sys.argv[1], 'kubeconfig': sys.argv[2]}})\n"
        "KubernetesProvider(config, ClusterPaths('kc')).record({'kind': 'scaled', 'nodeset': 'compute', 'reason': 'pinned to 1 by hand'})\n"
    )
    subprocess.run([sys.executable, "-c", code, NS, str(tmp_path / "kubeconfig")], check=True, timeout=60)
    assert [e.message for e in provider.api.list_namespaced_event(NS).items] == ["pinned to 1 by hand"]
