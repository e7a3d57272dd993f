"""redact_uri and describe_keyref: what messages and logs show of a key reference holds no
PIN, for well-formed URIs and for the mistakes an operator makes (L17, AC8; issue 7)."""

from __future__ import annotations

import pytest

from ocspd.errors import SigningKeyError
from ocspd.signing.keys import describe_keyref
from ocspd.signing.pkcs11 import Pkcs11Uri, redact_uri

PIN = "S3cretPin42"
MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (
            f"pkcs11:token=a;object=b?module-path={MODULE}&pin-value={PIN}",
            f"pkcs11:token=a;object=b?module-path={MODULE}",
        ),
        (f"pkcs11:token=a;object=b?pin-value={PIN}", "pkcs11:token=a;object=b"),
        (
            f"pkcs11:token=a;object=b?pin-value={PIN}&pin-source=file:/p",
            "pkcs11:token=a;object=b?pin-source=file:/p",
        ),
        # Mistakes: in the path, another case, percent-encoded, a PIN holding '&' or '?'.
        (f"pkcs11:token=a;pin-value={PIN};object=b?module-path=/m", "pkcs11:token=a"),
        (f"pkcs11:pin-value={PIN}", "pkcs11:"),
        (f"pkcs11:token=a;object=b?PIN-VALUE={PIN}", "pkcs11:token=a;object=b"),
        (f"pkcs11:token=a;object=b?Pin%2DValue={PIN}", "pkcs11:token=a;object=b"),
        (
            "pkcs11:token=a;object=b?pin-value=S3cret&Pin42&module-path=/m",
            "pkcs11:token=a;object=b?module-path=/m",
        ),
        ("pkcs11:token=a;object=b?pin-value=S3cret&Pin42=x", "pkcs11:token=a;object=b"),
        ("pkcs11:token=a;object=b?pin-value=S3cret?Pin42", "pkcs11:token=a;object=b"),
        ("pkcs11:token=a;pin-value=S3cret?Pin42;object=b", "pkcs11:token=a"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown
    assert "S3cret" not in redact_uri(uri) and "Pin42" not in redact_uri(uri)


@pytest.mark.parametrize(
    "keyref",
    [
        f"PKCS11:token=a;object=b?module-path={MODULE}&pin-value={PIN}",
        f"{MODULE}?pin-value={PIN}",
        f"pkcs11:token=a;object=b?pin-value={PIN}",
    ],
)
def test_describe_keyref_redacts_anything_but_file_paths(keyref: str) -> None:
    assert PIN not in describe_keyref(keyref)
    assert describe_keyref("file:/etc/ocspd/key.pem") == "file:/etc/ocspd/key.pem"


@pytest.mark.parametrize(
    "uri",
    [
        f"pkcs11:token=a;pin-value={PIN};object=b",
        f"pkcs11:token=a;object=b?PIN-VALUE={PIN}",
        f"pkcs11:token=a;object=b?pin%2dvalue={PIN}",
        "pkcs11:token=a;object=b?pin-value=S3cret&Pin42",
        "pkcs11:token=a;object=b?pin-value=S3cret&Pin42=x",
    ],
)
def test_parse_errors_never_show_the_pin(uri: str) -> None:
    with pytest.raises(SigningKeyError) as refused:
        Pkcs11Uri.parse(uri)
    assert "S3cret" not in str(refused.value) and "Pin42" not in str(refused.value)
    assert "S3cret" not in repr(refused.value)


def test_the_parsed_uri_keeps_the_pin_out_of_its_repr() -> None:
    parsed = Pkcs11Uri.parse(f"pkcs11:token=a;object=b?pin-value={PIN}")
    assert parsed.pin_value == PIN
    assert PIN not in repr(parsed) and PIN not in parsed.description
