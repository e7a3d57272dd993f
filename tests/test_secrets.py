"""No secret leaves through logs, metrics or messages (L17, AC8; issue 7): the token PIN, the
private keys and the audit MAC key never appear in the responder's log output, in /metrics,
or in what `ocspd serve` and `ocspd issuer add` print when they fail, whatever form the
operator's mistake takes (a wrong PIN, a PIN in the wrong place of the URI, a bad key file).
"""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import pytest
from conftest import Cli, Pki
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from responder import http_get, http_post, start_responder
from softhsm import SoftHSM

# Distinctive, so finding one in a text is never a coincidence.
PIN = "Qz7pin5e3cR9xLm"
WRONG_PIN = "Wr0ngPin7k2qTs"
AMPERSAND_PIN = ("Vb3pinAmp", "Hq8tailPart")  # one PIN holding an unencoded '&'


def _secrets(pki: Pki, audit_key: Path) -> dict[str, str]:
    """Everything that must never be shown, by what it is."""
    found = {
        "PIN": PIN,
        "wrong PIN": WRONG_PIN,
        "PIN before '&'": AMPERSAND_PIN[0],
        "PIN after '&'": AMPERSAND_PIN[1],
    }
    for label, path in (("responder key", pki.responder_key), ("CA key", pki.ca_key)):
        pem = path.read_text()
        lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        found[f"{label} PEM"] = "".join(lines)
        for number, line in enumerate(lines):
            if len(line) >= 32:
                found[f"{label} PEM line {number}"] = line
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        found[f"{label} DER hex"] = der.hex()
        found[f"{label} DER base64"] = base64.b64encode(der).decode()
        scalar = key.private_numbers().private_value
        found[f"{label} scalar hex"] = format(scalar, "x")
        found[f"{label} scalar"] = str(scalar)
    hex_key = "".join(audit_key.read_text().split())
    found["audit key hex"] = hex_key
    found["audit key base64"] = base64.b64encode(bytes.fromhex(hex_key)).decode()
    return found


def assert_no_secret(text: str, secrets: dict[str, str], where: str) -> None:
    lowered = text.lower()
    shown = [what for what, value in secrets.items() if value.lower() in lowered]
    assert not shown, f"{where} shows {', '.join(shown)}:\n{text}"


def _uri(hsm: SoftHSM, label: str, query: str) -> str:
    return f"pkcs11:token={hsm.token};object={label}?module-path={hsm.module}&{query}"


def _request(pki: Pki, cert: x509.Certificate, nonce: bool = False) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, pki.ca.cert, hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(b"n" * 16), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _serve_failing(
    url: str, tmp_path: Path, phrase: str, extra_env: dict[str, str] | None = None
) -> str:
    """What `ocspd serve` printed about a key it cannot use: it exits with the error, or (where
    it keeps serving health and retries) logs it; either way the text must name the problem."""
    responder = start_responder(url, tmp_path, workers=1, extra_env=extra_env, wait=False)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if responder.process.poll() is not None or phrase in responder.log.read_text():
                break
            time.sleep(0.2)
    finally:
        responder.stop()
    text = responder.log.read_text()
    assert phrase in text, text
    return text


def test_no_secret_in_logs_metrics_or_messages(
    ocspd: Cli, pki: Pki, audit_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = _secrets(pki, audit_key)
    with SoftHSM.create(tmp_path / "hsm", pin=PIN) as hsm:
        # The audit key on a token of its own: a process logged in to a token already does
        # not log in again, so a wrong PIN for the same token would go unnoticed.
        hsm.add_token("ocspd-audit")
        hsm.import_key(pki.responder.key, "ocspd-responder")
        hsm.add_secret_key("audit-mac", token="ocspd-audit")
        good_uri = _uri(hsm, "ocspd-responder", f"pin-value={PIN}")

        # The happy path first (a token may count failed logins): a responder whose key is
        # in the token, named by a URI that carries the PIN itself.
        added = ocspd(
            "issuer", "add", "ca", "--ca-cert", pki.ca_cert,
            "--responder-cert", pki.responder_cert, "--responder-key", good_uri,
        )  # fmt: skip
        assert added.code == 0, added.err
        assert_no_secret(added.out + added.err, secrets, "ocspd issuer add")
        listed = ocspd("issuer", "list")
        assert listed.code == 0 and "pkcs11:token=" in listed.out
        assert_no_secret(listed.out + listed.err, secrets, "ocspd issuer list")
        leaf_path = pki.leaf("secret-leaf")
        ocspd.ok("cert", "import", "--issuer", "ca", leaf_path)
        leaf = x509.load_pem_x509_certificate(leaf_path.read_bytes())

        responder = start_responder(
            ocspd.url, tmp_path, workers=1, config='[responder]\nlog_level = "debug"\n'
        )
        try:
            for nonce in (False, True):  # from the cache, and signed live in the token
                body = http_post(responder.url, _request(pki, leaf, nonce))[2]
                assert ocsp.load_der_ocsp_response(body).certificate_status == (
                    ocsp.OCSPCertStatus.GOOD
                )
            http_post(responder.url, b"\x30\x03garbage")
            http_get(responder.url + "MEUwQzBBMD8wPTAJBgUrDgMCGgUABBQ")
            metrics = responder.metrics(wait_for=r'outcome="malformedRequest"\} [1-9]')
        finally:
            assert responder.stop() == 0
        log = responder.log.read_text()
        assert '"msg": "serving issuer"' in log and "pkcs11:token=" in log  # it was logged
        assert_no_secret(log, secrets, "the responder's log")
        assert "ocspd_requests_total" in metrics
        assert_no_secret(metrics, secrets, "/metrics")

        # Operators' mistakes, refused with a message that names the key, never the PIN.
        monkeypatch.setenv("OCSPD_TEST_HSM_PIN", WRONG_PIN)
        module = hsm.module
        mistakes = {
            "wrong pin-value": _uri(hsm, "ocspd-responder", f"pin-value={WRONG_PIN}"),
            "wrong PIN in env": _uri(hsm, "ocspd-responder", "pin-source=env:OCSPD_TEST_HSM_PIN"),
            "pin-value among the path attributes": (
                f"pkcs11:token={hsm.token};pin-value={WRONG_PIN};object=ocsp-responder"
                f"?module-path={module}"
            ),
            "upper-case attribute name": _uri(hsm, "ocspd-responder", f"PIN-VALUE={WRONG_PIN}"),
            "percent-encoded attribute name": _uri(
                hsm, "ocspd-responder", f"pin%2Dvalue={WRONG_PIN}"
            ),
            "PIN holding an unencoded '&'": _uri(
                hsm, "ocspd-responder", f"pin-value={AMPERSAND_PIN[0]}&{AMPERSAND_PIN[1]}"
            ),
            "PIN holding an unencoded '&' and '='": _uri(
                hsm, "ocspd-responder", f"pin-value={AMPERSAND_PIN[0]}&{AMPERSAND_PIN[1]}=x"
            ),
            "mistyped scheme": (
                f"PKCS11:token={hsm.token};object=ocsp-responder?module-path={module}"
                f"&pin-value={WRONG_PIN}"
            ),
            "no scheme": f"{module}?pin-value={WRONG_PIN}",
            "the CA's key for the responder's certificate": f"file:{pki.ca_key}",
        }
        for mistake, keyref in mistakes.items():
            result = ocspd(
                "issuer", "add", "other", "--ca-cert", pki.ca_cert,
                "--responder-cert", pki.responder_cert, "--responder-key", keyref,
            )  # fmt: skip
            assert result.code == 1, (mistake, result)
            assert result.err.startswith("ocspd: error: "), (mistake, result.err)
            assert_no_secret(result.out + result.err, secrets, f"issuer add ({mistake})")
            if mistake.startswith("wrong"):
                assert "incorrect" in result.err, result.err

        # A key file that is not a key (one line of the real one damaged): named, not shown.
        broken = tmp_path / "broken.key"
        lines = pki.responder_key.read_text().splitlines()
        lines[2] = lines[2][::-1]
        broken.write_text("\n".join(lines) + "\n")
        broken.chmod(0o600)
        result = ocspd(
            "issuer", "add", "other", "--ca-cert", pki.ca_cert,
            "--responder-cert", pki.responder_cert, "--responder-key", f"file:{broken}",
        )  # fmt: skip
        assert result.code == 1 and str(broken) in result.err
        assert_no_secret(result.out + result.err, secrets, "issuer add (broken key file)")

        # `ocspd serve` failing to start: the stored key's PIN is wrong...
        wrong_uri = _uri(hsm, "ocspd-responder", f"pin-value={WRONG_PIN}")
        ocspd.sql("UPDATE issuers SET responder_key = $1", wrong_uri)
        failed = _serve_failing(ocspd.url, tmp_path, "incorrect")
        assert_no_secret(failed, secrets, "ocspd serve (wrong PIN)")
        ocspd.sql("UPDATE issuers SET responder_key = $1", good_uri)

        # ...or the audit key cannot be used: a token key with a wrong PIN, a key file
        # others can read, a key file that is not hex.
        loose = tmp_path / "loose-audit.key"
        shutil.copy(audit_key, loose)
        loose.chmod(0o644)
        damaged = tmp_path / "damaged-audit.key"
        damaged.write_text(audit_key.read_text().strip() + "zz\n")
        damaged.chmod(0o600)
        audit_mistakes = {
            "token audit key, wrong PIN": (
                f"pkcs11:token=ocspd-audit;object=audit-mac?module-path={module}"
                f"&pin-value={WRONG_PIN}"
            ),
            "audit key file readable by others": f"file:{loose}",
            "audit key file not hex": f"file:{damaged}",
        }
        for mistake, keyref in audit_mistakes.items():
            failed = _serve_failing(
                ocspd.url, tmp_path, "audit key", extra_env={"OCSPD_AUDIT_MAC_KEY": keyref}
            )
            assert_no_secret(failed, secrets, f"ocspd serve ({mistake})")
            # And a command that changes the status database, refused for the same reason.
            monkeypatch.setenv("OCSPD_AUDIT_MAC_KEY", keyref)
            result = ocspd("hold", "--issuer", "ca", "--serial", f"{leaf.serial_number:x}")
            monkeypatch.setenv("OCSPD_AUDIT_MAC_KEY", f"file:{audit_key}")
            assert result.code == 1, (mistake, result)
            assert_no_secret(result.out + result.err, secrets, f"ocspd hold ({mistake})")
