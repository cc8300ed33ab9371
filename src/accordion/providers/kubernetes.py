"""Nodes as Kubernetes Pods, one Pod per node (not a StatefulSet: any idle node can be removed).

Kubernetes only provisions: the batch scheduler decides. What the cluster owns in its namespace:
- a ConfigMap `accordion-<cluster>` standing for the cluster: every other object has an owner
  reference to it, so deleting it deletes them all (Kubernetes' garbage collector);
- a headless Service `<cluster>-nodes` (publishNotReadyAddresses): each node Pod sets hostname and
  subdomain, so `<node>.<cluster>-nodes` resolves as soon as the Pod has an IP, before slurmd
  registers and so before Slurm can schedule on it;
- a Secret `<cluster>-secrets` with the files nodes need privately (the munge key), made from the
  head's own copy: no secret is ever written into a manifest. It outlives the head: a head restarted
  without its state makes a new key, and the first Pod it creates replaces the Secret with it;
- the node Pods, labelled with cluster, node set and node, CPU and memory requests equal to limits.

Pods are followed with a watch (list once, then a stream of changes from that resourceVersion; a 410
Gone relists), so `list()` costs no API call. Every call is retried with backoff on 429/5xx and
transport errors; a create that fails for good is undone so no half-created node remains.
Accordion's events are mirrored as Kubernetes Events by a background thread, never by the caller.
"""

from __future__ import annotations

import atexit
import base64
import builtins
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from accordion.config import ClusterConfig, KubernetesSettings
from accordion.paths import ClusterPaths
from accordion.providers.base import NODE_CAPABILITIES, NodeInfo, NodeSpec, ProviderError

log = logging.getLogger("accordion.kubernetes")

T = TypeVar("T")
RETRYABLE = {429, 500, 502, 503, 504}
ATTEMPTS = 6  # 0.1 + 0.2 + ... + 3.2 s of backoff: a few seconds of API server trouble is absorbed
TIMEOUT = 10  # seconds for any one request
# Waiting reasons after which a container will not start without a change from someone.
STUCK = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
LABEL = "accordion.io"
EVENT_BACKLOG = 100  # events waiting to be posted; more are dropped (events.jsonl has them all)
EVENT_FLUSH = 5.0  # seconds `close` (or the process' exit) waits for the events still waiting


def _k8s() -> Any:
    import kubernetes

    return kubernetes


class KubernetesProvider:
    # A Pod cannot be made and held unstarted: the kubelet runs its containers as soon as it is scheduled.
    prepares = False

    def __init__(self, config: ClusterConfig, paths: ClusterPaths) -> None:
        self.config = config
        self.paths = paths
        self.settings: KubernetesSettings = config.kubernetes or KubernetesSettings()
        self.namespace = self.settings.namespace
        self.owner = f"accordion-{config.name}"
        self.service = f"{config.name}-nodes"
        self.secret = f"{config.name}-secrets"
        self.selector = f"{LABEL}/cluster={config.name}"
        self._nodeset = {n: ns for ns in config.nodesets for n in ns.node_names()}
        self._api: Any = None
        self._owner_ref: dict[str, object] | None = None
        self._pods: dict[str, Any] = {}
        self._synced = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._closed = threading.Event()
        self._secret_lock = threading.Lock()
        self._secret_data: dict[str, str] | None = None  # what this process last put in the Secret
        self._outbox: deque[dict[str, object]] = deque()
        self._outbox_changed = threading.Condition()
        self._poster: threading.Thread | None = None
        self._dropped = 0

    # ----- API access -----

    @property
    def api(self) -> Any:
        if self._api is None:
            k8s = _k8s()
            cfg = k8s.client.Configuration()
            try:
                if self.settings.kubeconfig:
                    k8s.config.load_kube_config(config_file=self.settings.kubeconfig, client_configuration=cfg)
                else:
                    k8s.config.load_incluster_config(client_configuration=cfg)
            except (k8s.config.ConfigException, OSError) as exc:
                where = f"kubernetes.kubeconfig {self.settings.kubeconfig}" if self.settings.kubeconfig else "in-cluster configuration (no kubernetes.kubeconfig given)"
                raise ProviderError(f"cannot use the {where}: {exc}") from None
            # Retries are ours (with backoff, and knowing which calls are safe to repeat), not urllib3's.
            cfg.retries = False
            self._api = k8s.client.CoreV1Api(k8s.client.ApiClient(cfg))
        return self._api

    def _call(self, what: str, fn: Callable[..., T], *args: object, tolerate: tuple[int, ...] = (), **kwargs: object) -> T | None:
        """`fn(*args)` with retries; None for a tolerated status (404 on delete, 409 on create)."""
        k8s = _k8s()
        delay = 0.1
        for attempt in range(ATTEMPTS):
            try:
                return fn(*args, _request_timeout=TIMEOUT, **kwargs)
            except k8s.client.exceptions.ApiException as exc:
                if exc.status in tolerate:
                    return None
                if exc.status not in RETRYABLE or attempt == ATTEMPTS - 1:
                    raise ProviderError(f"{what}: Kubernetes API answered {exc.status} {exc.reason}") from None
                problem = f"{exc.status} {exc.reason}"
            except Exception as exc:  # urllib3 timeouts and connection errors have no common base with ApiException
                if attempt == ATTEMPTS - 1:
                    raise ProviderError(f"{what}: Kubernetes API unreachable: {exc}") from None
                problem = type(exc).__name__
            log.warning("%s: %s; retrying in %.1f s", what, problem, delay)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    # ----- cluster objects -----

    def _labels(self, **more: str) -> dict[str, str]:
        return {"app.kubernetes.io/managed-by": "accordion", f"{LABEL}/cluster": self.config.name, **more}

    def _owned(self, name: str, **labels: str) -> dict[str, object]:
        return {"name": name, "namespace": self.namespace, "labels": self._labels(**labels), "ownerReferences": [self.owner_reference()]}

    def owner_reference(self) -> dict[str, object]:
        if self._owner_ref is None:
            cm = self._call("read the cluster's ConfigMap", self.api.read_namespaced_config_map, self.owner, self.namespace, tolerate=(404,))
            if cm is None:
                raise ProviderError(f"ConfigMap {self.namespace}/{self.owner} is missing: run `accordion up` first")
            self._owner_ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": self.owner, "uid": cm.metadata.uid, "controller": True, "blockOwnerDeletion": True}
        return self._owner_ref

    def _foreign_owner(self) -> str | None:
        """What is wrong with a ConfigMap of the owner's name that this cluster did not make, or None. Every
        object of the cluster is owned by it, and `down` deletes it: someone else's would go with theirs."""
        cm = self._call("read the cluster's ConfigMap", self.api.read_namespaced_config_map, self.owner, self.namespace, tolerate=(404,))
        labels = (cm.metadata.labels or {}) if cm is not None else self._labels()
        if all(labels.get(k) == v for k, v in self._labels().items()):
            return None
        return f"ConfigMap {self.namespace}/{self.owner} exists and is not this cluster's (labels {labels})"

    def setup(self) -> None:
        body = {"metadata": {"name": self.owner, "namespace": self.namespace, "labels": self._labels()}, "data": {"cluster": self.config.name}}
        created = self._call("create the cluster's ConfigMap", self.api.create_namespaced_config_map, self.namespace, body, tolerate=(409,))
        if created is None and (foreign := self._foreign_owner()):
            raise ProviderError(f"{foreign}: pick another cluster name or namespace")
        service = {
            "metadata": self._owned(self.service),
            "spec": {
                "clusterIP": "None",
                # Names resolve from the moment a Pod has an IP, not once it is Ready: slurmd must reach
                # slurmctld (and be reached) before any readiness could be judged.
                "publishNotReadyAddresses": True,
                "selector": {f"{LABEL}/cluster": self.config.name, f"{LABEL}/role": "node"},
                "ports": [{"name": "slurmd", "port": 6818}],
            },
        }
        self._call("create the nodes' Service", self.api.create_namespaced_service, self.namespace, service, tolerate=(409,))

    def teardown(self) -> None:
        names = [p.metadata.name for p in self._list_pods()]
        for name in names:
            self.delete(name)
        if foreign := self._foreign_owner():
            log.warning("%s: left alone, with the Service and Secret of this cluster's names", foreign)
            return
        for what, fn, name in (
            ("Secret", self.api.delete_namespaced_secret, self.secret),
            ("Service", self.api.delete_namespaced_service, self.service),
            ("ConfigMap", self.api.delete_namespaced_config_map, self.owner),
        ):
            self._call(f"delete the {what} {name}", fn, name, self.namespace, tolerate=(404,))
        deadline = time.monotonic() + 60
        while self._list_pods() and time.monotonic() < deadline:
            time.sleep(0.5)

    def head_address(self) -> str:
        return self.settings.head_address or f"{self.config.name}-head"

    def address(self, node: str) -> str:
        return f"{node}.{self.service}"

    def enter(self) -> list[str]:
        return ["ip", "netns", "exec", self.settings.network_namespace] if self.settings.network_namespace else []

    def login(self) -> list[str]:
        # The head Pod is the login node here; its own host name is what Kubernetes gave it.
        return self.enter()

    # ----- nodes -----

    def _ensure_secret(self, spec: NodeSpec) -> None:
        names = [Path(t).name for t in (*spec.secrets, *spec.files)]
        if len(set(names)) < len(names):
            raise ProviderError(f"the node files and secrets of {spec.name} share a file name: {sorted(names)}")
        data = {Path(target).name: base64.b64encode(Path(source).read_bytes()).decode() for target, source in spec.secrets.items()}
        data |= {Path(target).name: base64.b64encode(text.encode()).decode() for target, text in spec.files.items()}
        body = {"metadata": self._owned(self.secret), "type": "Opaque", "data": data}
        # Serialised: Pods start side by side, and none may be created while the Secret is being replaced.
        with self._secret_lock:
            created = self._call("create the cluster's Secret", self.api.create_namespaced_secret, self.namespace, body, tolerate=(409,))
            if created is None and data != self._secret_data:
                # The Secret exists but this process has not written it: an earlier head made it, maybe
                # with a key this head no longer has (state on an emptyDir: a new head, a new key), and a
                # node with another key than the head's never registers. The Role grants no read (nor
                # patch) on Secrets, so it is replaced unseen, once per process; Pods already running
                # keep the files they mounted, and later ones mount the new Secret.
                log.info("replacing Secret %s/%s with this head's files", self.namespace, self.secret)
                self._call("delete the cluster's Secret", self.api.delete_namespaced_secret, self.secret, self.namespace, tolerate=(404,))
                self._call("create the cluster's Secret", self.api.create_namespaced_secret, self.namespace, body)
            self._secret_data = data

    def pod_manifest(self, spec: NodeSpec) -> dict[str, object]:
        ns = self._nodeset[spec.name]
        resources = {"cpu": str(spec.cpus), "memory": f"{spec.memory_mb}Mi"}
        mounts: list[dict[str, object]] = []
        volumes: list[dict[str, object]] = []
        # The node's files travel in the same Secret as its secrets, readable and runnable by all.
        modes = {t: 0o400 for t in spec.secrets} | {t: 0o755 for t in spec.files}
        for i, target in enumerate(sorted({str(Path(t).parent) for t in modes})):
            items = [{"key": Path(t).name, "path": Path(t).name, "mode": m} for t, m in modes.items() if str(Path(t).parent) == target]
            volumes.append({"name": f"secret-{i}", "secret": {"secretName": self.secret, "items": items, "defaultMode": 0o400}})
            mounts.append({"name": f"secret-{i}", "mountPath": target, "readOnly": True})
        for i, b in enumerate(b for b in spec.binds if not b.head_only):
            source = self.settings.shared_volume or {"hostPath": {"path": b.source, "type": "DirectoryOrCreate"}}
            volumes.append({"name": f"shared-{i}", **source})
            mounts.append({"name": f"shared-{i}", "mountPath": b.target, "readOnly": b.readonly})
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self._owned(spec.name, **{f"{LABEL}/role": "node", f"{LABEL}/nodeset": ns.name, f"{LABEL}/node": spec.name}),
            "spec": {
                "hostname": spec.name,
                "subdomain": self.service,
                "restartPolicy": "Never",
                "enableServiceLinks": False,
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 10,
                "containers": [
                    {
                        "name": "node",
                        "image": ns.image or self.settings.image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": list(spec.command),
                        "env": [{"name": k, "value": v} for k, v in sorted(spec.env.items())],
                        "resources": {"requests": resources, "limits": resources},
                        "securityContext": {
                            "allowPrivilegeEscalation": True,  # job steps run as their users, via setuid
                            "capabilities": {"drop": ["ALL"], "add": NODE_CAPABILITIES},
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "volumeMounts": mounts,
                    }
                ],
                "volumes": volumes,
            },
        }

    def create(self, spec: NodeSpec) -> None:
        if spec.name not in self._nodeset:
            raise ProviderError(f"{spec.name} is not a node of cluster {self.config.name}")
        foreign = False
        try:
            if spec.secrets or spec.files:
                self._ensure_secret(spec)
            body = self.pod_manifest(spec)
            since = time.monotonic()
            while self._call(f"create Pod {spec.name}", self.api.create_namespaced_pod, self.namespace, body, tolerate=(409,)) is None:
                # The name is taken: by our own earlier attempt whose answer was lost (then it is done),
                # by a Pod of this name still terminating (then wait for it to go), or by someone else's
                # Pod (which the watch, filtered on this cluster's label, never shows). The watch answers
                # all three without a `get` permission.
                self.list()
                with self._lock:
                    pod = self._pods.get(spec.name)
                if pod is not None and pod.metadata.deletion_timestamp is None:
                    break
                waited = time.monotonic() - since
                if pod is None and waited > 3:  # the watch shows this cluster's Pods well within that
                    foreign = True
                    raise ProviderError(f"a Pod named {spec.name} not made by this cluster exists in {self.namespace}")
                if waited > 60:
                    raise ProviderError(f"Pod {spec.name} of an earlier node is still terminating")
                time.sleep(0.5)
        except Exception:
            if foreign:
                raise  # not ours to delete
            try:
                self.delete(spec.name)
            except ProviderError as exc:
                log.warning("could not undo the failed start of %s: %s", spec.name, exc)
            raise

    def prepare(self, spec: NodeSpec) -> None:
        raise ProviderError("provider 'kubernetes' does not prepare nodes")

    def delete(self, name: str) -> None:
        self._call(f"delete Pod {name}", self.api.delete_namespaced_pod, name, self.namespace, tolerate=(404,))
        with self._lock:
            self._pods.pop(name, None)

    def list(self) -> dict[str, NodeInfo]:
        self._follow()
        if not self._synced.wait(TIMEOUT):
            raise ProviderError("could not list the cluster's Pods (see the controller log)")
        with self._lock:
            pods = list(self._pods.values())
        # A terminating Pod is gone as far as the cluster is concerned: its node was already removed.
        return {p.metadata.name: _info(p) for p in pods if p.metadata.deletion_timestamp is None}

    # ----- watch -----

    def _list_pods(self) -> builtins.list[Any]:  # `list` is also this class's listing method
        result = self._call("list Pods", self.api.list_namespaced_pod, self.namespace, label_selector=self.selector)
        return list(result.items) if result is not None else []

    def _follow(self) -> None:
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_forever, name="pod-watch", daemon=True)
            self._watcher.start()

    def close(self) -> None:
        """Stop following Pods (the watch ends at its next event or timeout) and post the events still
        waiting, for at most EVENT_FLUSH seconds."""
        self._closed.set()
        atexit.unregister(self._flush_events)
        self._flush_events()

    def _watch_forever(self) -> None:
        k8s = _k8s()
        delay = 0.1
        while not self._closed.is_set():
            try:
                listing = self._call("list Pods", self.api.list_namespaced_pod, self.namespace, label_selector=self.selector)
                assert listing is not None
                with self._lock:
                    self._pods = {p.metadata.name: p for p in listing.items}
                self._synced.set()
                version = listing.metadata.resource_version
                stream = k8s.watch.Watch().stream(
                    self.api.list_namespaced_pod, self.namespace, label_selector=self.selector,
                    resource_version=version, timeout_seconds=300, _request_timeout=330,
                )
                for event in stream:
                    if self._closed.is_set():
                        return
                    pod = event["object"]
                    with self._lock:
                        if event["type"] == "DELETED":
                            self._pods.pop(pod.metadata.name, None)
                        else:
                            self._pods[pod.metadata.name] = pod
                    delay = 0.1
            except k8s.client.exceptions.ApiException as exc:
                # 410 Gone: our resourceVersion is too old; relisting is the cure, at once.
                if exc.status != 410:
                    log.warning("watching Pods: %s %s; relisting in %.1f s", exc.status, exc.reason, delay)
                    self._closed.wait(delay)
                    delay = min(delay * 2, 5.0)
            except Exception as exc:
                log.warning("watching Pods: %s; relisting in %.1f s", exc, delay)
                self._closed.wait(delay)
                delay = min(delay * 2, 5.0)

    # ----- events -----

    def record(self, event: dict[str, object]) -> None:
        """Mirror one of Accordion's events as a Kubernetes Event, best effort: queued for a background
        thread, so that an API server that is slow or down never holds up the caller (the controller's
        loop); when too many wait, the newest are dropped."""
        node = str(event.get("node") or "")
        with self._lock:
            pod = self._pods.get(node)
        involved = (
            {"apiVersion": "v1", "kind": "Pod", "name": node, "namespace": self.namespace, "uid": pod.metadata.uid}
            if pod is not None
            else {"apiVersion": "v1", "kind": "ConfigMap", "name": self.owner, "namespace": self.namespace}
        )
        kind = str(event["kind"])
        ts = event.get("ts")
        # When it happened, not when it is posted.
        when = datetime.fromtimestamp(ts if isinstance(ts, (int, float)) else time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: dict[str, object] = {
            "metadata": {"name": f"{node or self.owner}.{time.time_ns():x}", "namespace": self.namespace, "labels": self._labels()},
            "involvedObject": involved,
            "reason": "Node" + kind.capitalize(),
            "message": " ".join(x for x in (node, str(event.get("reason") or "")) if x) or kind,
            "type": "Warning" if kind in ("failed", "lost") else "Normal",
            "source": {"component": "accordion"},
            "firstTimestamp": when,
            "lastTimestamp": when,
            "count": 1,
        }
        with self._outbox_changed:
            if self._closed.is_set():
                return
            if len(self._outbox) >= EVENT_BACKLOG:
                self._dropped += 1
                if self._dropped == 1:  # once per overload, not once per event
                    log.warning("Kubernetes Events are not being posted fast enough: dropped (events.jsonl keeps them)")
                return
            self._outbox.append(body)
            self._outbox_changed.notify()
            if self._poster is None:
                # A daemon thread, so that a hung post never keeps the process alive; what is still
                # waiting when the process exits (a CLI command, the controller stopping) is posted then,
                # for a bounded time.
                self._poster = threading.Thread(target=self._post_events, name="event-poster", daemon=True)
                self._poster.start()
                atexit.register(self._flush_events)

    def _post_events(self) -> None:
        while True:
            with self._outbox_changed:
                while not self._outbox and not self._closed.is_set():
                    self._outbox_changed.wait()
                if not self._outbox:
                    return
                body = self._outbox[0]
            try:
                self.api.create_namespaced_event(self.namespace, body, _request_timeout=5)
            except Exception as exc:
                log.warning("could not record event %s as a Kubernetes Event: %s", body["reason"], exc)
            with self._outbox_changed:
                self._outbox.popleft()  # only now, so that a flush waits for the post in flight
                if self._dropped and not self._outbox:
                    log.warning("Kubernetes Events posted again; %d were dropped", self._dropped)
                    self._dropped = 0
                self._outbox_changed.notify_all()

    def _flush_events(self) -> None:
        """Let the poster finish what is waiting, for at most EVENT_FLUSH seconds."""
        with self._outbox_changed:
            self._closed.set()
            self._outbox_changed.notify_all()
            if not self._outbox_changed.wait_for(lambda: not self._outbox, EVENT_FLUSH):
                log.warning("%d Kubernetes Events not posted: the API did not answer in time", len(self._outbox))


def _info(pod: Any) -> NodeInfo:
    status = pod.status
    reason = ""
    phase = status.phase if status is not None else None
    if phase in ("Failed", "Succeeded"):
        reason = f"Pod {phase.lower()}" + (f" ({status.reason})" if status.reason else "")
    for cs in (status.container_statuses or []) if status is not None else []:
        state = cs.state
        if state is not None and state.terminated is not None:
            t = state.terminated
            reason = f"container exited with code {t.exit_code}" + (f" ({t.reason})" if t.reason else "")
        elif state is not None and state.waiting is not None and state.waiting.reason in STUCK:
            reason = state.waiting.reason + (f": {state.waiting.message}" if state.waiting.message else "")
    created = pod.metadata.creation_timestamp
    return NodeInfo(pod.metadata.name, not reason, created.timestamp() if created is not None else time.time(), reason)
