"""`crlgen`: the CRL publisher's command line.

The scheduler (`crlgen run`), `crlgen sign` and `crlgen show` are being built; until they land
this command only reports that, so operators are never told a CRL was made when none was.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ocspd import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crlgen",
        description="Sign and publish one full CRL per issuer from the ocspd status database.",
    )
    parser.add_argument("--version", action="version", version=f"crlgen {__version__}")
    parser.parse_args(argv)
    print("crlgen: CRL signing is not available in this release yet", file=sys.stderr)
    return 2
