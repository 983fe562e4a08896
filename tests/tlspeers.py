"""Peers for outbound TLS policy tests: certificates from a test CA and an MTA-STS
policy server.

``Issuer`` makes server certificates (for any names, valid or expired, from the test
CA or self-signed) and the server SSL contexts that present them with their chain, as
MX sinks and the policy server need. ``PolicyServer`` is aiohttp serving
``/.well-known/mta-sts.txt`` over HTTPS on a loopback address, one policy per
``mta-sts.<domain>`` host name (the Host header), counting the fetches.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.peers.testca import TestCA


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    context: ssl.SSLContext  # a server context presenting cert (+ the CA when chained)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


class Issuer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = TestCA.create(directory / "ca")
        self._count = 0

    @property
    def ca_file(self) -> Path:
        return self.ca.cert_file

    @property
    def ca_der(self) -> bytes:
        return self.ca.cert.public_bytes(serialization.Encoding.DER)

    def issue(self, *names: str, expired: bool = False, self_signed: bool = False,
              chain: bool = True) -> Issued:
        """A certificate for `names` (DNS SANs); `chain` sends the CA certificate too."""
        self._count += 1
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start, end = ((now - datetime.timedelta(days=60), now - datetime.timedelta(days=1))
                      if expired else (now - datetime.timedelta(minutes=5),
                                       now + datetime.timedelta(days=30)))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        signer_key = key if self_signed else self.ca.key
        issuer = subject if self_signed else self.ca.cert.subject
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                signer_key.public_key()), critical=False))
        cert = builder.sign(signer_key, hashes.SHA256())
        directory = self.directory / f"cert{self._count}"
        directory.mkdir(parents=True)
        pem = cert.public_bytes(serialization.Encoding.PEM)
        if chain and not self_signed:
            pem += self.ca.cert.public_bytes(serialization.Encoding.PEM)
        (directory / "chain.pem").write_bytes(pem)
        (directory / "key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "chain.pem", directory / "key.pem")
        return Issued(cert, context)


@dataclass
class PolicyServer:
    """MTA-STS policies over HTTPS; start() in the test's event loop."""

    address: str
    port: int
    context: ssl.SSLContext
    policies: dict[str, str] = field(default_factory=dict)  # domain -> policy text
    fetches: dict[str, int] = field(default_factory=dict)  # domain -> GETs served
    _runner: web.AppRunner | None = None

    async def start(self) -> PolicyServer:
        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.address, self.port,
                          ssl_context=self.context).start()
        return self

    async def _serve(self, request: web.Request) -> web.Response:
        host = (request.host or "").rsplit(":", 1)[0].lower()
        domain = host.removeprefix("mta-sts.")
        self.fetches[domain] = self.fetches.get(domain, 0) + 1
        policy = self.policies.get(domain)
        if policy is None:
            return web.Response(status=404, text="no policy\n")
        return web.Response(text=policy, content_type="text/plain")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx),
             f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"
