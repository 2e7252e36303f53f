"""Progress lines while a scenario runs, the machine it ran on, and the
results folder: ``SCENARIO.json``, ``SCENARIO.md`` and ``SCENARIO.png``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Progress", "fmt_ms", "fmt_ratio", "fmt_s", "machine_info", "md_table"]


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


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine.get('cpus')} vCPU ({machine.get('cpu_model', '?')}), "
        f"{machine.get('memory_gib', '?')} GiB, Linux {machine.get('kernel', '?')}, "
        f"Python {machine.get('python')}, trio {machine.get('trio', '?')}, "
        f"trio-websocket {machine.get('trio-websocket', '?')}"
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; ``None`` cells show as a dash."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = ["-" if c is None else str(c) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt_ms(value: float | None) -> str | None:
    """Milliseconds, readable: ``0.42 ms``, ``12.3 ms``, ``29.8 s``."""
    if value is None:
        return None
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def fmt_s(value: float | None) -> str | None:
    if value is None:
        return None
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def fmt_ratio(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}x"
