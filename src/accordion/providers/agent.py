"""`accordion agent`: one cluster's node containers on one host, driven by the head over mutual TLS.

Why mutual TLS rather than SSH: the agent is a long-running service with a small request API, and TLS lets
both ends prove who they are with certificates that Accordion makes itself (a CA per cluster, a certificate
per host, one for the head), with no account, login shell or authorized_keys entry on any host, and no
dependence on how a site configures sshd. Only TLS 1.3 is spoken, with no early data (Python's ssl module
has none): every connection gets fresh keys from a handshake with fresh randoms from both ends, and records
carry sequence numbers under those keys, so bytes captured from one connection and replayed on another fail
the handshake and do nothing.

Who may do what: the agent answers only a peer whose certificate was signed by its cluster's CA and names
the head (`CN=head`, client use only); host certificates are for server use only, so one host cannot
drive another. Keys are files of mode 0600 in the agent's and the head's state directories, never in the
cluster file, in argv or in logs.

Level-triggered: the head sends with every `converge` the names of the nodes this host should run and a
generation number (raised by the head on every change of placement); the agent removes every node not in
that list that it did not start under a newer generation (a create still in flight), so a lost delete or a
node left on a host that came back is removed at the next listing. The generations are kept on disk: a
restarted agent finds its nodes (runc's state) and keeps them.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from accordion.config import ClusterConfig, ConfigError, parse_config
from accordion.paths import CLUSTER_NAME, run_root, state_root
from accordion.providers.base import Bind, NodeInfo, NodeSpec, ProviderError
from accordion.providers.local import BRIDGE, NodeRuntime
from accordion.sh import CommandError, run
from accordion.store import private, read_json, write_json

log = logging.getLogger("accordion.agent")

PORT = 7471
HEAD_CN = "head"
VXLAN_PORT = 4789
# The cluster network's frames cross hosts inside VXLAN (50 bytes of headers) over a 1500-byte network.
MTU = 1450
VXLAN = "vx0"
MAX_BODY = 1 << 20
NETWORK_CHECK = 10.0
# A connection quiet for this long (mid-handshake, or kept open by the head between listings) is closed.
IDLE = 30.0
# The node image's entrypoint (images/node/entrypoint.sh, linked into the package): on a host, a node does
# not share the head's munge socket; this starts munged in the node from the cluster's key, which the head
# sends with each create, then runs the node's command.
NODE_ENTRYPOINT = Path(__file__).resolve().parent / "node-entrypoint.sh"


# ----- credentials -----


def head_pki(cluster: str) -> Path:
    """The cluster's CA and the head's certificate. Outside the cluster's state directory, which `down`
    removes: hosts enrolled once stay enrolled across `up`/`down`."""
    return state_root() / "pki" / cluster


def agent_dir(cluster: str) -> Path:
    return state_root() / "agent" / cluster


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    with open(path, "wb", opener=private) as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _cert(subject: str, issuer: x509.Name, public: Any, signer: ec.EllipticCurvePrivateKey, *, ca: bool, usage: list[x509.ObjectIdentifier],
          sans: list[x509.GeneralName], days: int) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ensure_ca(cluster: str) -> Path:
    """The cluster's CA and the head's client certificate, made once."""
    pki = head_pki(cluster)
    if (pki / "head.pem").is_file():
        return pki
    pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key, head_key = _key(), _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"accordion {cluster} CA")])
    ca = _cert(f"accordion {cluster} CA", name, ca_key.public_key(), ca_key, ca=True, usage=[], sans=[], days=3650)
    head = _cert(HEAD_CN, name, head_key.public_key(), ca_key, ca=False, usage=[ExtendedKeyUsageOID.CLIENT_AUTH], sans=[], days=3650)
    _write_key(pki / "ca.key", ca_key)
    _write_key(pki / "head.key", head_key)
    (pki / "ca.pem").write_bytes(_pem(ca))
    # Written last: its presence says the rest is complete.
    (pki / "head.pem").write_bytes(_pem(head))
    return pki


def make_csr(cluster: str, host: str) -> Path:
    """The host's key (kept here) and a signing request for the head; idempotent."""
    d = agent_dir(cluster)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not (d / "host.key").is_file():
        _write_key(d / "host.key", _key())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
    (d / "host.csr").write_bytes(csr.sign(_load_key(d / "host.key"), hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return d / "host.csr"


def sign_host(config: ClusterConfig, host: str, csr_pem: bytes, address: IPv4Address | None = None) -> bytes:
    """The host's certificate (server use only, for the name and address the cluster file gives it, or
    `address` for a host to be discovered) and the cluster's CA certificate, as one PEM bundle for
    `accordion agent --install`."""
    entry = next((h for h in config.hosts or [] if h.name == host), None)
    if entry is not None and address is not None and address != entry.address:
        raise ConfigError(f"hosts: {host} has address {entry.address} in the cluster file, not {address}")
    if entry is None and (address is None or config.discover is None):
        raise ConfigError(f"hosts: no host named {host!r} in the cluster file (a host to be discovered needs discover and --address)")
    if not re.fullmatch(CLUSTER_NAME, host):
        raise ConfigError(f"{host!r} is not allowed as a host name: use lower-case letters, digits and -, starting with a letter")
    where = entry.address if entry is not None else address
    assert where is not None
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise ConfigError(f"the signing request of {host} is not a PEM CSR: {exc}") from None
    if not csr.is_signature_valid:
        raise ConfigError(f"the signing request of {host} has a bad signature")
    pki = ensure_ca(config.name)
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    sans: list[x509.GeneralName] = [x509.DNSName(host), x509.IPAddress(where)]
    cert = _cert(host, ca.subject, csr.public_key(), _load_key(pki / "ca.key"), ca=False, usage=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans, days=730)
    return _pem(cert) + _pem(ca)


def install_bundle(cluster: str, bundle: bytes) -> None:
    d = agent_dir(cluster)
    certs = x509.load_pem_x509_certificates(bundle)
    if len(certs) != 2:
        raise ConfigError("the bundle from `accordion enrol` holds the host's certificate and the CA's: found " f"{len(certs)} certificate(s)")
    if not (d / "host.key").is_file():
        raise ConfigError(f"no host key in {d}: run `accordion agent` here first")
    if certs[0].public_key() != _load_key(d / "host.key").public_key():
        raise ConfigError("the certificate is not for this host's key (signed from another host's request?)")
    (d / "ca.pem").write_bytes(_pem(certs[1]))
    (d / "host.pem").write_bytes(_pem(certs[0]))


def server_context(cluster: str) -> ssl.SSLContext:
    d = agent_dir(cluster)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(d / "ca.pem"))
    ctx.load_cert_chain(str(d / "host.pem"), str(d / "host.key"))
    return ctx


def client_context(cluster: str) -> ssl.SSLContext:
    pki = head_pki(cluster)
    if not (pki / "head.pem").is_file():
        raise ProviderError(f"cluster {cluster} has no credentials yet: enrol its hosts with `accordion enrol` (see `accordion agent`)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "head.pem"), str(pki / "head.key"))
    return ctx


# ----- the cluster network across hosts -----


def vni(cluster: str) -> int:
    """The cluster's VXLAN network identifier: the same on every host, distinct per cluster name (24 bits, not 0)."""
    return int.from_bytes(hashlib.sha256(cluster.encode()).digest()[:3], "big") or 1


def ensure_vxlan(netns: str, cluster: str, local: str, peers: list[str]) -> None:
    """A VXLAN port on the bridge of `netns` sending to exactly `peers` (head-end replication: no multicast
    on the hosts' network). Made in this process's network namespace, where `local` is, then moved: its
    tunnel socket stays here and the device goes with the cluster's namespace when that is deleted."""
    inside = ["ip", "-n", netns]
    if run(inside + ["link", "show", VXLAN], check=False).returncode != 0:
        tmp = f"accvx{os.getpid() % 100000}"
        run(["ip", "link", "add", tmp, "type", "vxlan", "id", str(vni(cluster)), "local", local, "dstport", str(VXLAN_PORT)])
        try:
            run(["ip", "link", "set", tmp, "mtu", str(MTU), "netns", netns])
        except CommandError:
            run(["ip", "link", "del", tmp], check=False)
            raise
        run(inside + ["link", "set", tmp, "name", VXLAN])
        run(inside + ["link", "set", VXLAN, "master", BRIDGE, "up"])
    shown = run(["bridge", "-n", netns, "fdb", "show", "dev", VXLAN]).stdout
    have = {line.split()[2] for line in shown.splitlines() if line.startswith("00:00:00:00:00:00 dst ")}
    for peer in sorted(set(peers) - have):
        run(["bridge", "-n", netns, "fdb", "append", "00:00:00:00:00:00", "dev", VXLAN, "dst", peer])
    for peer in sorted(have - set(peers)):
        run(["bridge", "-n", netns, "fdb", "del", "00:00:00:00:00:00", "dev", VXLAN, "dst", peer], check=False)


# ----- the agent -----


def secret_data(spec: NodeSpec) -> dict[str, str]:
    """The contents of the files a node needs privately (read on the head), for the host's agent."""
    try:
        return {target: base64.b64encode(Path(source).read_bytes()).decode() for target, source in spec.secrets.items()}
    except OSError as exc:
        raise ProviderError(f"cannot read a secret of {spec.name}: {exc}") from None


def spec_to_json(spec: NodeSpec) -> dict[str, Any]:
    return {"name": spec.name, "cpus": spec.cpus, "memory_mb": spec.memory_mb, "command": spec.command,
            "binds": [vars(b) for b in spec.binds], "env": spec.env, "secrets": spec.secrets,
            "files": spec.files}


def spec_from_json(data: dict[str, Any]) -> NodeSpec:
    return NodeSpec(data["name"], int(data["cpus"]), int(data["memory_mb"]), list(data["command"]),
                    [Bind(**b) for b in data["binds"]], dict(data["env"]), dict(data["secrets"]), dict(data.get("files", {})))


def capacity() -> dict[str, int]:
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // 1024
    return {"cpus": len(os.sched_getaffinity(0)), "memory_mb": mem}


class Agent:
    """The state and operations behind the agent's requests (the HTTP layer is `_Handler`)."""

    def __init__(self, cluster: str, host: str, address: str) -> None:
        self.cluster, self.host, self.address = cluster, host, address
        self.dir = agent_dir(cluster)
        self.state_file = self.dir / "state.json"
        self.lock = threading.Lock()  # the generations and the runtime's set-up
        self.node_locks: dict[str, threading.Lock] = {}
        state = read_json(self.state_file, {})
        assert isinstance(state, dict)
        self.generations: dict[str, int] = dict(state.get("generations", {}))
        self.runtime: NodeRuntime | None = None
        self._network: tuple[object, float] = (None, 0.0)  # what the last network check covered, and when
        if state.get("config"):
            self._runtime(parse_config(state["config"], str(self.state_file)))

    def _runtime(self, config: ClusterConfig) -> NodeRuntime:
        if config.name != self.cluster:
            raise ProviderError(f"this agent serves cluster {self.cluster}, not {config.name}")
        if self.runtime is None or self.runtime.config != config:
            names = [h.name for h in config.hosts or []]
            if self.host not in names:
                raise ProviderError(f"host {self.host} is not one of cluster {self.cluster}'s hosts ({', '.join(names)})")
            # Bridges joined by VXLAN form one layer-2 network: each needs its own MAC.
            i = names.index(self.host) + 1
            self.runtime = NodeRuntime(
                config, f"{self.cluster}.{self.host}", run_root() / f"{self.cluster}.{self.host}", self.dir / "logs",
                bridge_mac=f"02:ac:01:00:{i >> 8:02x}:{i & 0xFF:02x}", mtu=MTU, entrypoint=NODE_ENTRYPOINT.resolve(),
            )
        return self.runtime

    def _save(self) -> None:
        assert self.runtime is not None
        write_json(self.state_file, {"config": json.loads(self.runtime.config.model_dump_json()), "generations": self.generations})

    def _node_lock(self, name: str) -> threading.Lock:
        with self.lock:
            return self.node_locks.setdefault(name, threading.Lock())

    def status(self) -> dict[str, Any]:
        nodes = self.runtime.list() if self.runtime is not None else {}
        return {"host": self.host, "cluster": self.cluster, "capacity": capacity(),
                "nodes": {n: {"running": i.running, "created": i.created, "reason": i.reason} for n, i in nodes.items()}}

    def converge(self, config: ClusterConfig, generation: int, wanted: list[str], peers: list[str]) -> dict[str, Any]:
        with self.lock:
            rt = self._runtime(config)
            # The network is checked again when the peers or the cluster change, and every NETWORK_CHECK
            # seconds: the head converges many times a second while nodes start, and each check costs
            # several `ip` runs on a host that is also running nodes.
            key = (rt, tuple(sorted(peers)))
            if key != self._network[0] or time.monotonic() - self._network[1] > NETWORK_CHECK:
                rt.setup(None)
                ensure_vxlan(rt.netns, self.cluster, self.address, peers)
                self._save()
                self._network = (key, time.monotonic())
        for name in sorted(set(rt.list()) - set(wanted)):
            with self._node_lock(name):
                if self.generations.get(name, 0) <= generation:
                    log.info("removing %s: not wanted here as of generation %d", name, generation)
                    rt.delete(name)
                    with self.lock:
                        self.generations.pop(name, None)
                        self._save()
        return self.status()

    def create(self, config: ClusterConfig, generation: int, spec: NodeSpec, secrets: dict[str, bytes]) -> dict[str, Any]:
        with self._node_lock(spec.name):
            with self.lock:
                rt = self._runtime(config)
                if not rt.nodes.is_dir():
                    raise ProviderError(f"host {self.host} has no cluster network yet (no converge)")
                self.generations[spec.name] = generation
                self._save()
            log.info("creating %s (generation %d)", spec.name, generation)
            rt.create(spec, secrets)
        return self.status()

    def delete(self, name: str) -> dict[str, Any]:
        with self._node_lock(name):
            if self.runtime is not None:
                log.info("deleting %s", name)
                self.runtime.delete(name)
            with self.lock:
                self.generations.pop(name, None)
                if self.runtime is not None:
                    self._save()
        return self.status()

    def teardown(self, config: ClusterConfig) -> dict[str, Any]:
        with self.lock:
            # From the head's word, not only this agent's state: an agent that lost its state file still
            # finds and removes the nodes, namespaces and cgroups named after the cluster and this host.
            self._runtime(config)
            if self.runtime is not None:
                log.info("tearing down every node and the cluster network")
                self.runtime.teardown()
                for leftover in (self.runtime.run / "runc", self.runtime.nodes, self.runtime.run):
                    try:
                        leftover.rmdir()
                    except OSError:
                        pass
            self.runtime = None
            self._network = (None, 0.0)
            self.generations = {}
            self.state_file.unlink(missing_ok=True)
        return self.status()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.client_address[0], *args)

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        # The handshake already required a certificate from the cluster's CA; only the head's may act.
        cert: Any = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        names = [str(attr[1]) for rdn in (cert or {}).get("subject", ()) for attr in rdn if attr[0] == "commonName"]
        if names != [HEAD_CN]:
            log.warning("refused a request from %s: certificate %s is not the head's", self.client_address[0], names)
            self._reply(403, {"error": "only the cluster's head may send requests"})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if not self._authorised():
            return
        if self.path != "/v1/status":
            self._reply(404, {"error": f"no such resource {self.path}"})
            return
        self._reply(200, self.server.agent.status())

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        if not self._authorised():
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._reply(413, {"error": "request too large"})
            return
        agent = self.server.agent
        try:
            req = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/v1/teardown":
                self._reply(200, agent.teardown(parse_config(req["config"], "the head's request")))
            elif self.path == "/v1/delete":
                self._reply(200, agent.delete(str(req["name"])))
            elif self.path in ("/v1/converge", "/v1/create"):
                config = parse_config(req["config"], "the head's request")
                if self.path == "/v1/converge":
                    self._reply(200, agent.converge(config, int(req["generation"]), list(req["nodes"]), list(req["peers"])))
                else:
                    secrets = {str(t): base64.b64decode(v) for t, v in req.get("secret_data", {}).items()}
                    self._reply(200, agent.create(config, int(req["generation"]), spec_from_json(req["spec"]), secrets))
            else:
                self._reply(404, {"error": f"no such operation {self.path}"})
        except (KeyError, TypeError, ValueError) as exc:
            self._reply(400, {"error": f"bad request: {exc!r}"})
        except (ProviderError, ConfigError, CommandError, OSError) as exc:
            log.error("%s failed: %s", self.path, exc)
            self._reply(500, {"error": str(exc)})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], agent: Agent, ctx: ssl.SSLContext) -> None:
        super().__init__(address, _Handler)
        self.agent = agent
        self.ctx = ctx

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        # The handshake runs in the request's thread (see finish_request), so a silent peer blocks no one.
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A peer that drops the connection mid-request (a refused or replayed one): one line, no traceback.
        log.warning("connection from %s ended: %s", client_address[0], sys.exc_info()[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(IDLE)
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            log.warning("refused a connection from %s: %s", client_address[0], exc)
            return
        super().finish_request(request, client_address)


def enrolled(cluster: str) -> bool:
    d = agent_dir(cluster)
    return all((d / f).is_file() for f in ("host.key", "host.pem", "ca.pem"))


SERVICE = "_accordion._tcp.local."


def announce(cluster: str, host: str, address: str, port: int) -> Any:
    """Announce this agent with DNS-SD on the interface of `address` only (not on every network of the host).
    Only an enrolled agent runs, so only an enrolled host is announced; the head still checks its certificate."""
    from zeroconf import ServiceInfo, Zeroconf

    zc = Zeroconf(interfaces=[address])
    info = ServiceInfo(
        SERVICE, f"{cluster}-{host}.{SERVICE}", port=port, addresses=[socket.inet_aton(address)],
        properties={"cluster": cluster, "host": host}, server=f"{cluster}-{host}.local.",
    )
    zc.register_service(info)
    return zc


def serve(cluster: str, host: str, address: str, port: int, stop: threading.Event, discoverable: bool = True) -> None:
    agent = Agent(cluster, host, address)
    server = _Server((address, port), agent, server_context(cluster))
    log.info("agent of host %s (cluster %s) listening on %s:%d; nodes kept: %s", host, cluster, address, port,
             ", ".join(sorted(agent.status()["nodes"])) or "none")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    zc = announce(cluster, host, address, port) if discoverable else None
    stop.wait()
    if zc is not None:
        zc.unregister_all_services()
        zc.close()
    server.shutdown()
    server.server_close()


# ----- the head's side -----


class AgentClient:
    """Requests to one host's agent. A host that does not answer raises ProviderError (never an empty answer).

    `keep`: the connection stays open between calls (the head's listing converges every host up to ten
    times a second while nodes start: one TLS handshake per host, not one per listing). Only for requests
    that may be sent twice: one on a kept connection that the agent had closed is sent again on a new one."""

    def __init__(self, cluster: str, name: str, address: IPv4Address, port: int, ctx: ssl.SSLContext, timeout: float, keep: bool = False) -> None:
        self.cluster, self.name, self.address, self.port, self.ctx, self.timeout = cluster, name, str(address), port, ctx, timeout
        self.keep = keep
        self._conn: http.client.HTTPSConnection | None = None

    def _connect(self, timeout: float) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(self.address, self.port, context=self.ctx, timeout=timeout)
        try:
            conn.connect()
            # The CA vouches for the address; the name must be the host's too (one host cannot pose as another).
            cert: Any = conn.sock.getpeercert() if isinstance(conn.sock, ssl.SSLSocket) else None
            names = [str(attr[1]) for rdn in (cert or {}).get("subject", ()) for attr in rdn if attr[0] == "commonName"]
            if names != [self.name]:
                raise ProviderError(f"agent at {self.address}:{self.port} is {', '.join(names) or 'unnamed'}, not host {self.name}")
        except BaseException:
            conn.close()
            raise
        return conn

    def call(self, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> dict[str, Any]:
        wait = timeout or self.timeout
        reused, conn = self._conn is not None, self._conn
        self._conn = None
        try:
            if conn is None:
                conn = self._connect(wait)
            elif conn.sock is not None:
                conn.sock.settimeout(wait)
            if body is None:
                conn.request("GET", path)
            else:
                conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"{}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if conn is not None:
                conn.close()
            if reused:
                return self.call(path, body, timeout)
            raise ProviderError(f"agent at {self.address}:{self.port} did not answer: {exc}") from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if self.keep and not resp.will_close:
            self._conn = conn
        else:
            conn.close()
        if resp.status != 200:
            raise ProviderError(f"agent at {self.address}:{self.port}: {data.get('error', resp.status)}")
        return data


def nodes_of(status: dict[str, Any]) -> dict[str, NodeInfo]:
    return {n: NodeInfo(n, bool(i["running"]), float(i["created"]), str(i.get("reason", ""))) for n, i in status["nodes"].items()}


def enrolment_help(cluster: str, host: str) -> str:
    csr = make_csr(cluster, host)
    return (
        f"host {host} is not enrolled in cluster {cluster} yet. Its key stays here; its signing request is {csr}.\n"
        f"  1. copy {csr} to the head, and there run:  accordion enrol {host} -f CLUSTER.yaml --csr {host}.csr > {host}.bundle\n"
        f"  2. copy {host}.bundle back here, and run:  accordion agent -c {cluster} --host {host} --address ADDRESS --install {host}.bundle\n"
        f"  3. start the agent:                        accordion agent -c {cluster} --host {host} --address ADDRESS"
    )


def run_agent(cluster: str, host: str, address: str, port: int, discoverable: bool) -> None:
    """Serve until SIGTERM or SIGINT."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(cluster, host, address, port, stop, discoverable)
