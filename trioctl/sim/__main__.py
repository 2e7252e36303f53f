"""``python -m trioctl.sim`` / ``trioctl-sim``: run the QEMU simulator."""

from __future__ import annotations

import sys

from ._process import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
