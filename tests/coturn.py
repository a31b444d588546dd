"""coturn for tests: the configuration of ``docs/turn.md``, a test CA, a running server.

The tests start coturn from the configuration block of ``docs/turn.md`` itself,
with only the deployment-specific values replaced (addresses, secret, certificate
files, the SFU's address), so that what the document says is what runs.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[1]
TURN_DOC = REPO / "docs" / "turn.md"
TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
CERTUTIL = shutil.which("certutil") or "/usr/bin/certutil"

# The values of the documented configuration that a deployment (here, the test) sets.
DEPLOYMENT_KEYS = frozenset(
    {"listening-ip", "relay-ip", "cert", "pkey", "static-auth-secret", "allowed-peer-ip"}
)


def documented_config() -> list[tuple[str, str | None]]:
    """The ``key=value`` (or bare ``key``) lines of the first ```conf block of the doc."""
    match = re.search(r"```conf\n(.*?)```", TURN_DOC.read_text(), re.S)
    assert match, f"{TURN_DOC} has no ```conf block"
    lines: list[tuple[str, str | None]] = []
    for raw in match.group(1).splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            key, sep, value = line.partition("=")
            lines.append((key.strip(), value.strip() if sep else None))
    return lines


def config_with(values: dict[str, list[str]], extra: list[str]) -> str:
    """The documented configuration with each key of ``values`` set to its values (one
    line each, in place of the documented ones), then the ``extra`` lines."""
    documented = documented_config()
    missing = values.keys() - {key for key, _ in documented}
    assert not missing, f"docs/turn.md no longer sets {sorted(missing)}"
    out: list[str] = []
    for key, value in documented:
        if key in values:
            if values[key]:
                out += [f"{key}={v}" for v in values.pop(key)]
                values[key] = []  # the first documented line of a key carries them all
            continue
        out.append(key if value is None else f"{key}={value}")
    return "\n".join([*out, *extra]) + "\n"


@dataclass(frozen=True, slots=True)
class TestCa:
    """A certificate authority made for one test run, and a server certificate it signed."""

    __test__ = False  # not a test class, despite its name

    ca: Path
    cert: Path
    key: Path


def make_test_ca(directory: Path, server_ip: str) -> TestCa:
    """A CA and a certificate for ``server_ip`` (an IP address SAN), valid for a day."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "LCO Classroom test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_ip)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(server_ip))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TestCa(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def trust_ca_for_chromium(home: Path, ca: Path) -> None:
    """Make a Chromium started with ``HOME=home`` trust ``ca``.

    Chromium verifies a TURN server's TLS certificate as it verifies a web site's
    (a ``turns:`` server with an untrusted certificate gives no relay candidate). On
    Linux it takes trust anchors added by the user from the NSS database in
    ``$HOME/.pki/nssdb``: the CA goes there, trusted for TLS servers ("C").
    """
    database = home / ".pki" / "nssdb"
    database.mkdir(parents=True, exist_ok=True)
    subprocess.run([CERTUTIL, "-d", f"sql:{database}", "-N", "--empty-password"], check=True)
    subprocess.run(
        [CERTUTIL, "-d", f"sql:{database}", "-A", "-t", "C,,", "-n", "lco-test-ca", "-i", ca],
        check=True,
    )


@dataclass
class Coturn:
    """A running ``turnserver`` with the documented configuration."""

    process: subprocess.Popen[bytes]
    address: str
    secret: bytes
    realm: str
    config: str
    log_path: Path
    ca: TestCa
    port: int = 3478
    tls_port: int = 443

    @property
    def urls(self) -> tuple[str, ...]:
        """The three ways in that docs/turn.md gives ``lco serve --turn-url``."""
        return (
            f"turn:{self.address}:{self.port}?transport=udp",
            f"turn:{self.address}:{self.port}?transport=tcp",
            f"turns:{self.address}:{self.tls_port}?transport=tcp",
        )

    def setting(self, key: str) -> str:
        """A value of the running configuration."""
        for line in self.config.splitlines():
            name, _, value = line.partition("=")
            if name == key:
                return value
        raise KeyError(key)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_coturn(
    directory: Path, address: str, sfu_address: str, secret: bytes, ca: TestCa
) -> Coturn:
    """Start coturn on ``address`` relaying to ``sfu_address`` (the only private peer
    allowed); return once it accepts TCP on its plain and TLS ports.

    ``directory`` becomes the ``turnserver`` user's (coturn continues as that user), so
    it must be reachable by it: not under a private temporary directory.
    """
    config = config_with(
        {
            "listening-ip": [address],
            "relay-ip": [address],
            "cert": [str(ca.cert)],
            "pkey": [str(ca.key)],
            "static-auth-secret": [secret.decode()],
            "allowed-peer-ip": [sfu_address],
        },
        # Test-only: log to our file; keep the pid file and coturn's user database
        # out of /var. A CLI password would open coturn's admin console (coturn opens
        # none without one): it shows that no-cli keeps it closed.
        [
            f"cli-password={secrets.token_urlsafe(16)}",
            "log-file=stdout",
            "simple-log",
            f"pidfile={directory / 'turnserver.pid'}",
            f"userdb={directory / 'turndb'}",
        ],
    )
    config_path = directory / "turnserver.conf"
    config_path.write_text(config)
    # turnserver opens its database after it became proc-user.
    shutil.chown(directory, "turnserver", "turnserver")
    log_path = directory / "turnserver.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [TURNSERVER, "-c", str(config_path)], stdout=log, stderr=subprocess.STDOUT
        )
    realm = dict(documented_config())["realm"] or ""
    coturn = Coturn(process, address, secret, realm, config, log_path, ca)
    try:
        _wait_listening(coturn, (coturn.port, coturn.tls_port))
    except BaseException:
        stop_coturn(coturn)
        raise
    return coturn


def _wait_listening(coturn: Coturn, ports: tuple[int, ...], timeout: float = 15.0) -> None:
    # coturn tells nobody when its listeners are up: poll them, bounded.
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if coturn.process.poll() is not None:
            code = coturn.process.returncode
            raise RuntimeError(f"turnserver exited with {code}:\n{coturn.log()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"turnserver is not listening on {pending}:\n{coturn.log()}")
        try:
            socket.create_connection((coturn.address, pending[0]), timeout=1.0).close()
            pending.pop(0)
        except OSError:
            time.sleep(0.05)


def stop_coturn(coturn: Coturn) -> None:
    """Stop turnserver (SIGTERM, then SIGKILL)."""
    if coturn.process.poll() is None:
        coturn.process.terminate()
        try:
            coturn.process.wait(10)
        except subprocess.TimeoutExpired:
            coturn.process.kill()
            coturn.process.wait()


def coturn_available() -> str | None:
    """Why coturn tests cannot run here, or None."""
    if not os.environ.get("LCO_TEST_PEER_ADDRESS"):
        return "coturn tests need the test network namespace: run them via scripts/netns-run"
    if not Path(TURNSERVER).exists():
        return "no turnserver (install Debian's coturn package: scripts/install-test-deps)"
    return None
