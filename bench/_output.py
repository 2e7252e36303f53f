"""Progress lines while a scenario runs, the machine it ran on, and the
result file ``SCENARIO.json`` (:mod:`bench._render` writes the rest)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Progress", "machine_info", "write_json"]


class Progress:
    """Timestamped lines on stderr: ``[  12.3 s] storm/default: message``."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._quiet = quiet
        self._start = time.monotonic()
        self.prefix = ""

    def say(self, message: str) -> None:
        if self._quiet:
            return
        elapsed = time.monotonic() - self._start
        where = f"{self.prefix}: " if self.prefix else ""
        print(f"[{elapsed:7.1f} s] {where}{message}", file=self._stream, flush=True)


def machine_info() -> dict[str, Any]:
    """CPUs, memory, CPU model, kernel, Python and library versions."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.partition(":")[2].strip()
                break
        info["load_average"] = list(os.getloadavg())
    except (OSError, ValueError):
        pass
    try:
        import resource

        info["open_files_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError):
        pass
    info.update(_git_state())
    from importlib import metadata

    for dist in ("trio", "trio-websocket", "trioctl"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return info


def _git_state() -> dict[str, Any]:
    """The commit of the source tree measured, and whether it had local changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head, "modified_files": len(changed)}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
