"""The host agent's door: real TLS 1.3 with real certificates from `accordion enrol`'s code, on loopback.

Every refused request is shown to do nothing by counting the agent's operations; the same request with the
head's credentials is shown to work, so that a refusal is not merely a broken server.
"""

from __future__ import annotations

import socket
import ssl
import threading
from ipaddress import IPv4Address

import pytest

from accordion.config import parse_config
from accordion.errors import ConfigError
from accordion.providers import agent as A
from accordion.providers.base import ProviderError

CLUSTER = "tls"


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCORDION_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("ACCORDION_RUN", str(tmp_path / "run"))
    config = parse_config({"name": CLUSTER, "provider": "hosts", "hosts": [{"name": "h1", "address": "127.0.0.1"}]})
    csr = A.make_csr(CLUSTER, "h1")
    A.install_bundle(CLUSTER, A.sign_host(config, "h1", csr.read_bytes()))
    agent = A.Agent(CLUSTER, "h1", "127.0.0.1")
    calls: list[str] = []
    real_delete = agent.delete

    def counted(name: str):
        calls.append(name)
        return real_delete(name)

    agent.delete = counted  # type: ignore[method-assign]
    server = A._Server(("127.0.0.1", 0), agent, A.server_context(CLUSTER))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1], calls, config
    server.shutdown()
    server.server_close()


def client(port: int, ctx: ssl.SSLContext) -> A.AgentClient:
    return A.AgentClient(CLUSTER, "h1", IPv4Address("127.0.0.1"), port, ctx, 5)


def test_the_head_is_served(served):
    port, calls, _ = served
    status = client(port, A.client_context(CLUSTER)).call("/v1/status")
    assert status["host"] == "h1" and status["nodes"] == {} and status["capacity"]["cpus"] >= 1
    client(port, A.client_context(CLUSTER)).call("/v1/delete", {"name": "hpc-node-0"})
    assert calls == ["hpc-node-0"]


def _context(cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A client that trusts the cluster's CA (so only its own credentials are at fault)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(A.head_pki(CLUSTER) / "ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def test_no_certificate_is_refused(served):
    port, calls, _ = served
    with pytest.raises(ProviderError, match="did not answer"):
        client(port, _context()).call("/v1/delete", {"name": "hpc-node-0"})
    assert calls == []


def test_plain_http_is_refused(served):
    port, calls, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b'POST /v1/delete HTTP/1.1\r\nHost: x\r\nContent-Length: 24\r\n\r\n{"name": "hpc-node-0"}  ')
        s.settimeout(5)
        reply = s.recv(4096)
    assert not reply.startswith(b"HTTP"), reply
    assert calls == []


def test_another_clusters_certificate_is_refused(served, tmp_path):
    port, calls, _ = served
    pki = A.ensure_ca("other")  # a head of another cluster, with its own CA
    with pytest.raises(ProviderError, match="did not answer"):
        client(port, _context(str(pki / "head.pem"), str(pki / "head.key"))).call("/v1/delete", {"name": "hpc-node-0"})
    assert calls == []


def test_a_hosts_certificate_cannot_drive_an_agent(served):
    """Same CA, but a host's certificate: one compromised host must not command the others."""
    port, calls, _ = served
    d = A.agent_dir(CLUSTER)
    with pytest.raises(ProviderError):
        client(port, _context(str(d / "host.pem"), str(d / "host.key"))).call("/v1/delete", {"name": "hpc-node-0"})
    assert calls == []


def test_the_head_refuses_an_agent_of_another_cluster(served):
    """The head checks the agent too: a host answering with another CA's certificate gets no request."""
    port, calls, _ = served
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pki = A.ensure_ca("other")
    ctx.load_verify_locations(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "head.pem"), str(pki / "head.key"))
    with pytest.raises(ProviderError, match="certificate verify failed"):
        client(port, ctx).call("/v1/delete", {"name": "hpc-node-0"})
    assert calls == []


def test_a_replayed_capture_is_refused(served):
    """Bytes captured from a real request, replayed on a new connection, fail TLS's handshake: nothing runs."""
    port, calls, _ = served
    captured = bytearray()
    listener = socket.create_server(("127.0.0.1", 0))

    def relay() -> None:
        conn, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", port))

        def pump(src: socket.socket, dst: socket.socket, record: bool) -> None:
            while data := src.recv(65536):
                if record:
                    captured.extend(data)
                dst.sendall(data)
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the other side has closed already

        back = threading.Thread(target=pump, args=(upstream, conn, False), daemon=True)
        back.start()
        pump(conn, upstream, True)
        back.join(5)
        conn.close()
        upstream.close()

    t = threading.Thread(target=relay, daemon=True)
    t.start()
    client(listener.getsockname()[1], A.client_context(CLUSTER)).call("/v1/delete", {"name": "hpc-node-0"})
    t.join(5)
    listener.close()
    assert calls == ["hpc-node-0"] and len(captured) > 500
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(bytes(captured))
        s.settimeout(5)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert b"HTTP/1.1" not in reply and b"hpc-node-0" not in reply
    assert calls == ["hpc-node-0"], "the replayed request was carried out"


def test_enrolment_refuses_a_request_for_an_unknown_host_or_another_key(served):
    _, _, config = served
    csr = A.make_csr(CLUSTER, "h1").read_bytes()
    with pytest.raises(ConfigError, match="no host named 'h9'"):
        A.sign_host(config, "h9", csr)
    with pytest.raises(ConfigError, match="not a PEM CSR"):
        A.sign_host(config, "h1", b"junk")
    # A bundle signed for another key (another host's request) is not installed.
    other = A._key()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    foreign = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "h1")])).sign(other, hashes.SHA256())
    bundle = A.sign_host(config, "h1", foreign.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match="not for this host's key"):
        A.install_bundle(CLUSTER, bundle)


def test_keys_are_private_files(served):
    for path in [A.agent_dir(CLUSTER) / "host.key", A.head_pki(CLUSTER) / "ca.key", A.head_pki(CLUSTER) / "head.key"]:
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_only_the_heads_name_may_act(served):
    """A client certificate from the cluster's CA that is not the head's (say, issued for a tool) gets 403."""
    port, calls, _ = served
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    pki = A.head_pki(CLUSTER)
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    key = A._key()
    cert = A._cert("intruder", ca.subject, key.public_key(), A._load_key(pki / "ca.key"), ca=False, usage=[ExtendedKeyUsageOID.CLIENT_AUTH], sans=[], days=1)
    d = A.agent_dir(CLUSTER)
    A._write_key(d / "intruder.key", key)
    (d / "intruder.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ProviderError, match="only the cluster's head"):
        client(port, _context(str(d / "intruder.pem"), str(d / "intruder.key"))).call("/v1/delete", {"name": "hpc-node-0"})
    assert calls == []


def test_the_head_refuses_a_host_posing_as_another(served):
    """The CA vouches for h1 at this address: called as h2, it gets no request."""
    port, calls, _ = served
    with pytest.raises(ProviderError, match="is h1, not host h2"):
        A.AgentClient(CLUSTER, "h2", IPv4Address("127.0.0.1"), port, A.client_context(CLUSTER), 5).call("/v1/delete", {"name": "hpc-node-0"})
    assert calls == []


def test_a_host_to_be_discovered_is_enrolled_with_its_address(served):
    _, _, config = served
    csr = A.make_csr(CLUSTER, "h1").read_bytes()
    with pytest.raises(ConfigError, match="needs discover and --address"):
        A.sign_host(config, "h4", csr, IPv4Address("127.0.0.4"))
    with pytest.raises(ConfigError, match="not 127.0.0.9"):
        A.sign_host(config, "h1", csr, IPv4Address("127.0.0.9"))
    found = config.model_copy(update={"discover": IPv4Address("127.0.0.1")})
    from cryptography import x509

    cert = x509.load_pem_x509_certificates(A.sign_host(found, "h4", csr, IPv4Address("127.0.0.4")))[0]
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress) == [IPv4Address("127.0.0.4")]


def test_a_kept_connection_is_reused_and_renewed_once_the_agent_closed_it(served, monkeypatch):
    port, calls, _ = served
    monkeypatch.setattr(A, "IDLE", 0.3)
    kept = A.AgentClient(CLUSTER, "h1", IPv4Address("127.0.0.1"), port, A.client_context(CLUSTER), 5, keep=True)
    kept.call("/v1/delete", {"name": "hpc-node-0"})
    first = kept._conn
    kept.call("/v1/delete", {"name": "hpc-node-1"})
    assert first is not None and kept._conn is first, "the second request should reuse the connection"
    threading.Event().wait(1.0)  # the agent closes it as idle
    kept.call("/v1/delete", {"name": "hpc-node-2"})
    assert kept._conn is not first and calls == ["hpc-node-0", "hpc-node-1", "hpc-node-2"]


def test_a_node_spec_crosses_to_the_agent_whole():
    from accordion.providers.base import Bind, NodeSpec

    spec = NodeSpec("n-0", 2, 512, ["/usr/sbin/slurmd"], [Bind("/a", "/b", readonly=False)], {"K": "v"},
                    {"/etc/k": "/head/k"}, {"/usr/local/libexec/x/hook": "#!/bin/sh\n"})
    assert A.spec_from_json(A.spec_to_json(spec)) == spec
