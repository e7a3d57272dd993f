"""What every bench script needs before it runs operator commands."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def ensure_audit_key() -> None:
    """Operator commands refuse to change the status database without an audit MAC key
    (AA7.1). Unless the caller set one, make a throwaway key (in a directory of its own, which
    outlives the bench's work directories) and export it to every command this process
    starts."""
    if os.environ.get("OCSPD_AUDIT_MAC_KEY"):
        return
    key = Path(tempfile.mkdtemp(prefix="ocspd-bench-audit-")) / "audit.key"
    subprocess.run(
        [sys.executable, "-m", "ocspd", "audit", "keygen", "--out", str(key)],
        check=True,
        capture_output=True,
    )
    os.environ["OCSPD_AUDIT_MAC_KEY"] = f"file:{key}"
