"""A kubelet and cluster network stand-in: runs the Pods the API server holds with `podman kube play`.

For each Pod of its namespace it sees through a watch, it does what a kubelet and a CNI plugin would:
- a network namespace of the Pod's own, a veth on the cluster bridge, an IP (10.88.1.N);
- the Secret volumes made files (a kubelet materialises them the same way), everything else of the
  Pod spec given to `podman kube play` as the provider wrote it, run inside that namespace;
- cluster DNS: `<hostname>.<subdomain>[.<ns>.svc.cluster.local]` -> Pod IP, served by dnsmasq on the
  bridge address, which is also where Pods (a resolv.conf bind-mounted as a kubelet does) and the head
  (/etc/netns/<name>/resolv.conf, used by `ip netns exec`) find it;
- Pod status (phase, podIP, container state) written back through the API; a container that exits is
  reported with its exit code; a Pod deleted through the API is torn down.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from accordion.sh import run

BRIDGE_IP = "10.88.0.1"


def sh(*argv: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(argv, check=check, timeout=120, env=env)


class ClusterNetwork:
    """A bridge in a network namespace of its own (where the head runs, at BRIDGE_IP) plus DNS."""

    def __init__(self, name: str, namespace: str, workdir: Path) -> None:
        self.netns = name
        self.namespace = namespace
        self.workdir = workdir
        self.hosts = workdir / "hosts"
        self._lock = threading.Lock()
        self.dnsmasq: subprocess.Popen[bytes] | None = None
        self.etc = Path("/etc/netns") / name

    def setup(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        sh("ip", "netns", "add", self.netns)
        ns = ["ip", "-n", self.netns]
        sh(*ns, "link", "set", "lo", "up")
        sh(*ns, "link", "add", "kbr0", "type", "bridge")
        sh(*ns, "addr", "add", f"{BRIDGE_IP}/16", "dev", "kbr0")
        sh(*ns, "link", "set", "kbr0", "up")
        self.hosts.write_text("")
        # What `ip netns exec` (the head's way in) puts in place of the host's resolv.conf.
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text(f"nameserver {BRIDGE_IP}\nsearch {' '.join(self.searches())}\n")
        self.dnsmasq = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
             f"--addn-hosts={self.hosts}", f"--listen-address={BRIDGE_IP}", "--bind-interfaces", "--user=root",
             # Authoritative for every name, as cluster DNS is for its domain: a Pod that does not exist
             # (yet) is NXDOMAIN at once, not a "try again" that slurmctld waits on for seconds per node.
             "--local=/#/",
             f"--pid-file={self.workdir / 'dnsmasq.pid'}", "--log-facility=-"],
            stdout=subprocess.DEVNULL, stderr=open(self.workdir / "dnsmasq.log", "wb"),
        )

    def searches(self) -> list[str]:
        return [f"{self.namespace}.svc.cluster.local", "svc.cluster.local", "cluster.local"]

    def publish(self, ip: str, names: list[str]) -> None:
        self._edit(ip, [f"{ip} {' '.join(names)}"])

    def unpublish(self, ip: str) -> None:
        self._edit(ip, [])

    def _edit(self, ip: str, new: list[str]) -> None:
        """Replace ip's line. Pods start on threads of their own: under a lock, or two Pods published at once
        each rewrite the file without the other's name (a node not resolvable: `srun` fails); and by a
        rename, so that dnsmasq, rereading on the signal of an earlier edit, never reads half a file."""
        with self._lock:
            lines = [line for line in self.hosts.read_text().splitlines() if not line.startswith(ip + " ")] + new
            tmp = self.hosts.with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + ("\n" if lines else ""))
            tmp.rename(self.hosts)
            self._reload()

    def _reload(self) -> None:
        if self.dnsmasq is not None:
            self.dnsmasq.send_signal(signal.SIGHUP)  # dnsmasq rereads --addn-hosts files on SIGHUP

    def teardown(self) -> None:
        if self.dnsmasq is not None:
            self.dnsmasq.kill()
            self.dnsmasq.wait(10)
        sh("ip", "netns", "del", self.netns, check=False)
        shutil.rmtree(self.etc, ignore_errors=True)


class Kubelet:
    def __init__(self, api: Any, namespace: str, network: ClusterNetwork, workdir: Path, env: dict[str, str]) -> None:
        self.api = api
        self.namespace = namespace
        self.network = network
        self.workdir = workdir
        self.env = env  # CONTAINERS_CONF & co. for podman
        self.pods: dict[str, dict[str, Any]] = {}  # name -> {ip, netns, file}
        self.played: list[str] = []  # every Pod it ran, in order
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._watch, daemon=True), threading.Thread(target=self._monitor, daemon=True)]
        self.next_ip = 10

    def start(self) -> Kubelet:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for name in list(self.pods):
            self._remove(name)

    # ----- following the API -----

    def _watch(self) -> None:
        from kubernetes import watch

        while not self.stop_event.is_set():
            try:
                for event in watch.Watch().stream(self.api.list_namespaced_pod, self.namespace, timeout_seconds=5, _request_timeout=10):
                    if self.stop_event.is_set():
                        return
                    pod = event["object"]
                    name = pod.metadata.name
                    if event["type"] == "DELETED" or pod.metadata.deletion_timestamp is not None:
                        if name in self.pods:
                            self._remove(name)
                    elif name not in self.pods:
                        with self.lock:
                            self.pods[name] = {"running": False}
                        # podman kube play takes seconds (vfs copies the image): Pods start side by side.
                        threading.Thread(target=self._run, args=(pod,), daemon=True).start()
            except Exception:
                time.sleep(0.2)

    def _monitor(self) -> None:
        """Report containers that exited (podman's view) as terminated, as a kubelet would."""
        while not self.stop_event.wait(1.0):
            with self.lock:
                names = [n for n, p in self.pods.items() if p.get("running")]
            for name in names:
                out = sh("podman", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", f"{name}-node", check=False, env=self.env)
                if out.returncode == 0 and out.stdout.split()[0] in ("exited", "stopped"):
                    code = int(out.stdout.split()[1])
                    with self.lock:
                        if name in self.pods:
                            self.pods[name]["running"] = False
                    self._status(name, "Failed", {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed"}})

    # ----- one Pod -----

    def _status(self, name: str, phase: str, state: dict[str, Any], ip: str | None = None) -> None:
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if phase == "Running" else "False"}],
            "containerStatuses": [{"name": "node", "image": "", "imageID": "", "ready": phase == "Running", "restartCount": 0, "state": state}],
        }
        if ip:
            status["podIP"] = ip
        try:
            self.api.patch_namespaced_pod_status(name, self.namespace, {"status": status})
        except Exception:
            pass  # deleted meanwhile

    def _run(self, pod: Any) -> None:
        name = pod.metadata.name
        manifest = self.api.api_client.sanitize_for_serialization(pod)
        work = self.workdir / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        with self.lock:
            ip = f"10.88.1.{self.next_ip}"
            veth = f"kv{self.next_ip}"
            self.next_ip += 1
            netns = f"kpod-{name}"
            self.pods[name] = {"ip": ip, "netns": netns, "file": work / "pod.yaml", "running": False}
        self.played.append(name)
        try:
            spec = manifest["spec"]
            for vol in spec.get("volumes", []):
                if "secret" in vol:
                    secret = self.api.read_namespaced_secret(vol["secret"]["secretName"], self.namespace)
                    target = work / "secrets" / vol["name"]
                    target.mkdir(parents=True)
                    for item in vol["secret"].get("items") or [{"key": k, "path": k} for k in secret.data]:
                        f = target / item["path"]
                        f.write_bytes(base64.b64decode(secret.data[item["key"]]))
                        os.chmod(f, item.get("mode", vol["secret"].get("defaultMode", 0o644)))
                    vol.pop("secret")
                    vol["hostPath"] = {"path": str(target), "type": "Directory"}
            # Cluster DNS: a kubelet bind-mounts the resolv.conf it writes; podman's host network mode
            # would otherwise copy the host's.
            resolv = work / "resolv.conf"
            resolv.write_text(f"nameserver {BRIDGE_IP}\nsearch {' '.join(self.network.searches())}\n")
            spec.setdefault("volumes", []).append({"name": "kubelet-resolv", "hostPath": {"path": str(resolv), "type": "File"}})
            for container in spec["containers"]:
                container.setdefault("volumeMounts", []).append({"name": "kubelet-resolv", "mountPath": "/etc/resolv.conf", "readOnly": True})
            played = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": manifest["metadata"].get("labels", {})}, "spec": spec}
            self.pods[name]["file"].write_text(yaml.safe_dump(played))
            # No registry is reachable here: an image not present locally cannot be pulled (asking podman
            # to pull it hangs on the network instead of failing).
            for container in spec["containers"]:
                if sh("podman", "image", "exists", container["image"], check=False, env=self.env).returncode != 0:
                    message = f"{container['image']}: not found (no registry reachable)"
                    self._status(name, "Pending", {"waiting": {"reason": "ErrImagePull", "message": message}})
                    return
            self._network(veth, netns, ip)
            self.network.publish(ip, self._names(spec, name))
            out = sh("nsenter", f"--net=/run/netns/{netns}", "podman", "kube", "play", "--network", "host", str(self.pods[name]["file"]), check=False, env=self.env)
            if out.returncode != 0:
                reason = "ErrImagePull" if "image" in out.stderr.lower() else "RunContainerError"
                self._status(name, "Pending", {"waiting": {"reason": reason, "message": out.stderr.strip()[-200:]}}, ip)
                return
            with self.lock:
                if name in self.pods:
                    self.pods[name]["running"] = True
            self._status(name, "Running", {"running": {"startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}, ip)
        except Exception as exc:
            self._status(name, "Failed", {"terminated": {"exitCode": 128, "reason": "StandInError", "message": str(exc)[:200]}})

    def _names(self, spec: dict[str, Any], name: str) -> list[str]:
        host, sub = spec.get("hostname", name), spec.get("subdomain")
        if not sub:
            return [host]
        return [f"{host}.{sub}", f"{host}.{sub}.{self.namespace}.svc.cluster.local"]

    def _network(self, veth: str, netns: str, ip: str) -> None:
        sh("ip", "netns", "add", netns)
        sh("ip", "-n", self.network.netns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("ip", "-n", self.network.netns, "link", "set", veth, "master", "kbr0", "up")
        for args in (["link", "set", "lo", "up"], ["addr", "add", f"{ip}/16", "dev", "eth0"], ["link", "set", "eth0", "up"]):
            sh("ip", "-n", netns, *args)

    def _remove(self, name: str) -> None:
        with self.lock:
            pod = self.pods.get(name)
            if pod is None or "file" not in pod or pod.get("removing"):
                return
            pod["removing"] = True
        sh("podman", "kube", "down", str(pod["file"]), check=False, env=self.env)
        sh("podman", "pod", "rm", "-f", name, check=False, env=self.env)
        self.network.unpublish(pod["ip"])
        sh("ip", "netns", "del", pod["netns"], check=False)
        shutil.rmtree(self.workdir / name, ignore_errors=True)
        with self.lock:
            self.pods.pop(name, None)  # only now: `pods` empty means every container is gone
