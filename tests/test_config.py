"""Configuration: file, environment overrides, and the bounds refused at start-up."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ocspd.config import NoncePolicy, UnknownSerials, load_config, parse_duration
from ocspd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_loads() -> None:
    config = load_config(ROOT / "deploy" / "ocspd.example.toml", environ={})
    assert config.responder.response_lifetime == dt.timedelta(days=2)
    assert config.responder.nonce is NoncePolicy.ECHO
    assert config.responder.unknown_serials is UnknownSerials.UNKNOWN
    assert config.database.url.startswith("postgresql://")


def test_audit_hold(tmp_path: Path) -> None:
    """[audit] hold: 1 s unless set; "0s" refuses at once (AA1.1 e, tryLater policy)."""
    path = tmp_path / "c.toml"
    path.write_text("")
    assert load_config(path, environ={}).audit.hold == dt.timedelta(seconds=1)
    path.write_text('[audit]\nhold = "0s"\n')
    assert load_config(path, environ={}).audit.hold == dt.timedelta(0)
    path.write_text('[audit]\nhold = "250ms"\n')
    assert load_config(path, environ={}).audit.hold == dt.timedelta(milliseconds=250)


def test_max_status_age(tmp_path: Path) -> None:
    """[responder] max_status_age: 500 ms unless set, half the 1 s revocation budget."""
    path = tmp_path / "c.toml"
    path.write_text("")
    assert load_config(path, environ={}).responder.max_status_age == dt.timedelta(milliseconds=500)
    path.write_text('[responder]\nmax_status_age = "3s"\n')
    assert load_config(path, environ={}).responder.max_status_age == dt.timedelta(seconds=3)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[database]\nurl = "postgresql://file/db"\n[responder]\nlisten = "0.0.0.0:80"\n'
    )
    env = {
        "OCSPD_DATABASE_URL": "postgresql://env/db",
        "OCSPD_LISTEN": "127.0.0.1:8443",
        "OCSPD_WORKERS": "3",
    }
    config = load_config(path, environ=env)
    assert config.database.url == "postgresql://env/db"
    assert config.responder.listen == ("127.0.0.1", 8443)
    assert config.responder.workers == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("15m", 900),
        ("36h", 129600),
        ("2d", 172800),
        (90, 90),
        ("1.5h", 5400),
    ],
)
def test_durations(text: str | int, expected: float) -> None:
    assert parse_duration(text, "x").total_seconds() == expected


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[responder]\nresponse_lifetime = "10d1h"', "not a duration"),
        ('[responder]\nresponse_lifetime = "241h"', "at most 10 days are allowed (pkio71)"),
        ('[responder]\nrefresh_after = "97h"', "at most 4 days are allowed (pkio71)"),
        ('[responder]\nlisten = "8080"', "not HOST:PORT"),
        ('[responder]\npath = "ocsp"', "must start with '/'"),
        ("[responder]\nworkers = -1", "at least 0"),
        ('[responder]\nnonce = "sometimes"', "must be one of echo, ignore"),
        ("[nope]\nx = 1", "unknown section [nope]"),
        ("[database]\nurl = 5", "must be a string"),
        ("not toml at all [", "cannot read config file"),
        ('[crl]\ninterval = "8d"', "at most 7 days are allowed (pkio65, RM2.2a)"),
        ('[crl]\nnext_update = "11d"', "at most 10 days are allowed (pkio65)"),
        ('[crl]\ninterval = "5d"\nnext_update = "4d"', "or a CRL expires before the next one"),
        ('[crl]\nrevocation_delay = "25h"', "at most 24 hours are allowed (eIDAS art. 24.3)"),
        ('[crl]\nrevocation_delay = "10s"\npoll_interval = "30s"', "can miss its deadline"),
        (
            '[responder]\nmax_status_age = "11s"',
            "max_status_age must be more than 0 and at most 10 s",
        ),
        (
            '[responder]\nmax_status_age = "0s"',
            "max_status_age must be more than 0 and at most 10 s",
        ),
        ('[audit]\nhold = "11s"', "audit.hold must be between 0 and 10 s"),
        ('[audit]\nhold = "-1s"', "not a duration"),
    ],
)
def test_bad_settings_name_field_and_bound(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        load_config(path, environ={})


def test_lifetime_of_exactly_ten_days_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[responder]\nresponse_lifetime = "10d"\nrefresh_after = "4d"\n')
    assert load_config(path, environ={}).responder.response_lifetime == dt.timedelta(days=10)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml", environ={})
