"""The cloud's certificate authority: signs gateway client certificates (from their CSRs) and the
sync listener's server certificate. Key material lives in ``data_dir`` (private keys 0600)."""

import ipaddress
import os
import ssl
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud.db.times import utcnow
from cloud.errors import ConfigurationError, UnsupportedKey, ValidationFailed

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
SERVER_KEY_FILE = "sync-server.key"
SERVER_CERT_FILE = "sync-server.crt"
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1)
_RSA_MIN_BITS = 2048


@dataclass(frozen=True)
class IssuedCertificate:
    pem: str
    serial: str  # lower-case hex
    not_after: datetime


@dataclass(frozen=True)
class PeerIdentity:
    common_name: str
    serial: str


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _check_gateway_key(key: object) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES):
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= _RSA_MIN_BITS:
        return
    raise UnsupportedKey(
        f"the CSR key must be EC P-256/P-384, Ed25519 or RSA >= {_RSA_MIN_BITS} bits"
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CertificateAuthority:
    def __init__(self, data_dir: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.data_dir = data_dir
        self._key = key
        self.cert = cert

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def cert_path(self) -> Path:
        return self.data_dir / CA_CERT_FILE

    @classmethod
    def load_or_create(cls, data_dir: Path) -> "CertificateAuthority":
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path, cert_path = data_dir / CA_KEY_FILE, data_dir / CA_CERT_FILE
        if key_path.exists() and cert_path.exists():
            try:
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            except ValueError as exc:
                raise ConfigurationError(f"unreadable CA in {data_dir}") from exc
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ConfigurationError("the CA key must be an EC key")
            return cls(data_dir, key, cert)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Vending Fleet"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Vending Fleet Cloud CA {uuid.uuid4()}"),
            ]
        )
        now = utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(data_dir, key, cert)

    def _leaf(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey | object,
        days: int,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        now = utcnow()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def sign_gateway_csr(self, csr_pem: str, gateway_id: str, days: int) -> IssuedCertificate:
        """Sign the CSR's public key for ``gateway_id``, ignoring the subject the CSR asks for."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise ValidationFailed("csr_pem is not a PEM certificate signing request") from exc
        try:
            public_key = csr.public_key()
        except (UnsupportedAlgorithm, ValueError) as exc:
            raise UnsupportedKey("the CSR key algorithm or curve is not supported") from exc
        _check_gateway_key(public_key)
        try:
            valid = csr.is_signature_valid
        except (InvalidSignature, UnsupportedAlgorithm, ValueError) as exc:
            raise ValidationFailed("the CSR signature does not verify") from exc
        if not valid:
            raise ValidationFailed("the CSR signature does not verify")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Vending Fleet Gateways"),
                x509.NameAttribute(NameOID.COMMON_NAME, gateway_id),
            ]
        )
        cert = self._leaf(subject, public_key, days, ExtendedKeyUsageOID.CLIENT_AUTH)
        return IssuedCertificate(
            pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            serial=serial_hex(cert.serial_number),
            not_after=cert.not_valid_after_utc,
        )

    def write_server_certificate(self, hostnames: list[str]) -> tuple[Path, Path]:
        """A fresh server key and certificate for the sync listener; returns (cert, key) paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
        cert = self._leaf(subject, key.public_key(), 397, ExtendedKeyUsageOID.SERVER_AUTH, sans)
        cert_path, key_path = self.data_dir / SERVER_CERT_FILE, self.data_dir / SERVER_KEY_FILE
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def server_ssl_context(self, hostnames: list[str]) -> ssl.SSLContext:
        """TLS for the sync listener: client certificates from this CA are required."""
        cert_path, key_path = self.write_server_certificate(hostnames)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_path, key_path)
        context.load_verify_locations(cadata=self.cert_pem)
        context.verify_mode = ssl.CERT_REQUIRED
        return context


def peer_identity(der: bytes) -> PeerIdentity | None:
    """CN and serial of a (TLS-verified) peer certificate."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    return PeerIdentity(common_name=str(names[0].value), serial=serial_hex(cert.serial_number))
