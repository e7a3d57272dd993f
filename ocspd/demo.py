"""`make demo`: a working setup on one machine with nothing configured.

Without OCSPD_DATABASE_URL it starts an embedded PostgreSQL (pgserver) under ./.demo/pg. It
makes a demo PKI under ./.demo/pki (root, issuing CA, delegated responder with
id-kp-OCSPSigning and id-pkix-ocsp-nocheck, good and revoked leaves), loads it with the same
commands an operator uses, and says what it made. Re-running it reuses what is there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from ocspd import cli, devpki
from ocspd.audit.mac import write_key_file
from ocspd.model import format_serial

DEMO_DIR = Path(".demo")
ISSUER = "demo-ca"


def _run(*args: str | Path) -> None:
    argv = [str(a) for a in args]
    print("$ ocspd " + " ".join(argv), flush=True)
    code = cli.main(argv)
    if code != 0:
        raise SystemExit(f"demo: `ocspd {' '.join(argv)}` failed with exit code {code}")


def _database_url() -> str:
    configured = os.environ.get("OCSPD_DATABASE_URL")
    if configured:
        print("using the database in OCSPD_DATABASE_URL")
        return configured
    from pgserver.postgres_server import get_server  # the embedded default; only the demo needs it

    data = (DEMO_DIR / "pg").resolve()
    data.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server keeps running after this process, for the commands the
    # walk-through in README.md runs next; `make demo-stop` stops it.
    server = get_server(data, cleanup_mode=None)
    url: str = server.get_uri()
    print(f"embedded PostgreSQL 16 under {data}")
    return url


def _make_pki(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    root = devpki.make_ca("ocspd Demo Root CA", days=3650)
    ca = devpki.make_ca("ocspd Demo Issuing CA", issuer=root, days=1825)
    responder = devpki.make_responder("ocspd Demo OCSP Responder", ca, days=365)
    devpki.write_cert(directory / "root.pem", root.cert)
    devpki.write_cert(directory / "ca.pem", ca.cert)
    devpki.write_key(directory / "ca.key", ca.key)
    devpki.write_cert(directory / "chain.pem", ca.cert, root.cert)
    devpki.write_cert(directory / "responder.pem", responder.cert)
    devpki.write_key(directory / "responder.key", responder.key)
    leaf_key = devpki.new_key()
    devpki.write_key(directory / "leaf.key", leaf_key)
    leaves = directory / "leaves"
    leaves.mkdir(exist_ok=True)
    for name in ("www", "mail", "api", "vpn", "old-www", "lost-laptop"):
        cert = devpki.make_leaf(f"{name}.demo.example", ca, leaf_key)
        devpki.write_cert(leaves / f"{name}.pem", cert)


def _serial(path: Path) -> str:
    return format_serial(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)


def main() -> int:
    pki = DEMO_DIR / "pki"
    url = _database_url()
    os.environ["OCSPD_DATABASE_URL"] = url
    # Changes are only made on record (AA7.1): a key file for the demo's audit trail.
    audit_key = (DEMO_DIR / "audit.key").resolve()
    if not audit_key.exists():
        DEMO_DIR.mkdir(parents=True, exist_ok=True)
        write_key_file(audit_key)
    os.environ.setdefault("OCSPD_AUDIT_MAC_KEY", f"file:{audit_key}")
    # Records of OCSP requests that PostgreSQL could not take wait here (RS3.1).
    os.environ.setdefault("OCSPD_AUDIT_SPOOL_DIR", str((DEMO_DIR / "audit-spool").resolve()))
    fresh = not (pki / "ca.pem").exists()
    if fresh:
        _make_pki(pki)
        print(f"made a demo PKI under {pki}")
    _run("db", "migrate")
    if fresh:
        _run(
            "issuer", "add", ISSUER, "--ca-cert", pki / "ca.pem",
            "--responder-cert", pki / "responder.pem",
            "--responder-key", f"file:{(pki / 'responder.key').resolve()}",
            "--ca-key", f"file:{(pki / 'ca.key').resolve()}",
        )  # fmt: skip
        _run("cert", "import", "--issuer", ISSUER, *sorted((pki / "leaves").glob("*.pem")))
        _run(
            "revoke",
            "--issuer",
            ISSUER,
            "--serial",
            _serial(pki / "leaves/old-www.pem"),
            "--reason",
            "superseded",
        )
        _run(
            "revoke",
            "--issuer",
            ISSUER,
            "--serial",
            _serial(pki / "leaves/lost-laptop.pem"),
            "--reason",
            "keyCompromise",
        )
    _run("issuer", "list")
    for name in ("www", "old-www"):
        _run("status", "--issuer", ISSUER, "--serial", _serial(pki / f"leaves/{name}.pem"))
    listen = os.environ.get("OCSPD_LISTEN", "127.0.0.1:8080")
    url_base = f"http://{listen}/"
    crl_dir = (DEMO_DIR / "crl").resolve()
    config = DEMO_DIR / "ocspd.toml"
    # A demo pace: CRLs re-signed 30 seconds after a change rather than the default 5 minutes.
    config.write_text(
        f'[crl]\ndirectory = "{crl_dir}"\nrevocation_delay = "30s"\npoll_interval = "2s"\n'
    )
    print(
        f"""
The status database is loaded. In another shell, ask the responder:
  openssl ocsp -issuer {pki}/ca.pem -cert {pki}/leaves/www.pem -cert {pki}/leaves/old-www.pem \\
      -url {url_base} -CAfile {pki}/chain.pem
  curl -s {url_base}crl/{ISSUER}.crl | openssl crl -inform DER -noout -text | head -20
  curl -s {url_base}readyz; curl -s http://127.0.0.1:9090/metrics | grep ocspd_requests_total
and change a status while it serves (OCSP shows it within a second, the CRL within 30 s):
  OCSPD_DATABASE_URL='{url}' OCSPD_AUDIT_MAC_KEY=file:{audit_key} \\
      .venv/bin/ocspd revoke --issuer {ISSUER} --serial {_serial(pki / "leaves/www.pem")} --reason superseded
and check the audit trail of it all:
  OCSPD_DATABASE_URL='{url}' OCSPD_AUDIT_MAC_KEY=file:{audit_key} .venv/bin/ocspd audit verify

Starting the CRL publisher (crlgen run, CRLs in {crl_dir}) and the responder on {listen};
Ctrl-C stops both...
""",
        flush=True,
    )
    publisher = subprocess.Popen([sys.executable, "-m", "crlgen", "--config", str(config), "run"])
    try:
        return cli.main(["--config", str(config), "serve", "--listen", listen, "--workers", "2"])
    finally:
        publisher.terminate()
        publisher.wait(30)


if __name__ == "__main__":
    raise SystemExit(main())
