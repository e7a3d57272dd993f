"""A plain `pip install .` (not editable) gives working commands with the migrations inside."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_plain_install_ships_migrations_and_commands(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in (target / "ocspd" / "migrations").glob("*.sql")) == sorted(
        p.name for p in (ROOT / "sql").glob("*.sql")
    )
    entry_points = next(target.glob("ocspd-*.dist-info")) / "entry_points.txt"
    text = entry_points.read_text()
    assert "ocspd = ocspd.cli:main" in text and "crlgen = crlgen.cli:main" in text
    # Run from elsewhere so the checkout cannot stand in for the installed package.
    env = {**os.environ, "PYTHONPATH": str(target)}
    script = (
        "import ocspd, sys; from ocspd.store.migrate import available_migrations; "
        "assert ocspd.__file__.startswith(sys.argv[1]), ocspd.__file__; "
        "print(len(available_migrations()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert int(out) == len(list((ROOT / "sql").glob("*.sql"))) >= 1
    help_text = subprocess.run(
        [sys.executable, "-m", "ocspd", "--help"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "revoke" in help_text and "OCSPD_DATABASE_URL" in help_text
    # Every module of the checkout is in the installed tree (a package missing from
    # pyproject's list would only fail when its first user imports it, e.g. at `serve`).
    for package in ("ocspd", "crlgen"):
        for source in (ROOT / package).rglob("*.py"):
            relative = source.relative_to(ROOT)
            assert (target / relative).exists(), f"{relative} is not installed"
    imported = subprocess.run(
        [sys.executable, "-c", "import ocspd.app, ocspd.serve, crlgen.cli; print('ok')"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert imported.stdout.strip() == "ok", imported.stderr
