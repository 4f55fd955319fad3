"""The gateway's identity towards the cloud: its private key, its certificate, the cloud's CA.

The key is made here and never leaves the gateway; the cloud only ever sees a CSR. Files live in
``<data_dir>/cloud/`` (the key with mode 0600)::

    gateway.key  gateway.crt  ca.crt  enrollment.json
"""

import json
import os
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.errors import NotEnrolled


@dataclass(frozen=True)
class Enrollment:
    gateway_id: str
    site_id: str
    tenant_id: str
    sync_url: str


class Identity:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key_path = directory / "gateway.key"
        self.cert_path = directory / "gateway.crt"
        self.ca_path = directory / "ca.crt"
        self.meta_path = directory / "enrollment.json"

    def enrollment(self) -> Enrollment | None:
        """What the last successful enrolment left, or None if the gateway is not enrolled."""
        needed = (self.key_path, self.cert_path, self.ca_path, self.meta_path)
        if not all(p.exists() for p in needed):
            return None
        return Enrollment(**json.loads(self.meta_path.read_text()))

    def make_csr(self, common_name: str) -> str:
        """Create (or reuse) the private key and return a PEM CSR for it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.key_path.exists():
            loaded = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise NotEnrolled(f"{self.key_path} is not an EC private key")
            key = loaded
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_private(self.key_path, pem)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
            .sign(key, hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    def save(self, enrollment: Enrollment, certificate_pem: str, ca_pem: str) -> None:
        self.cert_path.write_text(certificate_pem)
        self.ca_path.write_text(ca_pem)
        # Written last: its presence is what marks the gateway as enrolled.
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(enrollment)))
        os.replace(tmp, self.meta_path)

    def ssl_context(self) -> ssl.SSLContext:
        """Client context for the mTLS sync listener: our certificate, only the cloud CA."""
        if self.enrollment() is None:
            raise NotEnrolled("the gateway has not enrolled with the cloud yet")
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_path))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        return ctx


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
