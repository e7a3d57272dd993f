"""[responder] request_timeout and keepalive_timeout: defaults, units and bounds (issue 7)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ocspd.config import load_config
from ocspd.errors import ConfigError


def test_defaults() -> None:
    config = load_config(None, environ={"OCSPD_CONFIG": ""})
    assert config.responder.request_timeout == dt.timedelta(seconds=10)
    assert config.responder.keepalive_timeout == dt.timedelta(seconds=75)


def test_durations_with_units(tmp_path: Path) -> None:
    path = tmp_path / "ocspd.toml"
    path.write_text('[responder]\nrequest_timeout = "2500ms"\nkeepalive_timeout = 30\n')
    config = load_config(path, environ={})
    assert config.responder.request_timeout == dt.timedelta(seconds=2.5)
    assert config.responder.keepalive_timeout == dt.timedelta(seconds=30)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('request_timeout = "500ms"', "request_timeout must be between 1 s and 5 min, got 0.5 s"),
        ('request_timeout = "6m"', "request_timeout must be between 1 s and 5 min, got 360 s"),
        ("keepalive_timeout = 0", "keepalive_timeout must be between 1 s and 1 h, got 0 s"),
        ('keepalive_timeout = "2h"', "keepalive_timeout must be between 1 s and 1 h, got 7200 s"),
        ('request_timeout = "soon"', "not a duration"),
    ],
)
def test_out_of_bounds_is_refused(tmp_path: Path, setting: str, message: str) -> None:
    path = tmp_path / "ocspd.toml"
    path.write_text(f"[responder]\n{setting}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})
