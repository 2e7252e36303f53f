"""Shared fixtures.

Rules for every test here (trio-websocket's): only local sockets, virtual time
(``autojump_clock``) for anything that sleeps, and a ``trio.fail_after`` bound
on every test that does real I/O so a hang fails fast instead of stalling CI.
Tests marked ``qemu`` need ``qemu-system-x86_64``; they skip without it on a
developer machine and fail without it when ``CI`` is set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# CI machines are shared and noisy: judge tests by behaviour, not by how fast
# Hypothesis could generate or run an example.
settings.register_profile("trioctl", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("trioctl")

QEMU_BINARY = "qemu-system-x86_64"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if shutil.which(QEMU_BINARY):
        return
    if os.environ.get("CI") or os.environ.get("TRIOCTL_REQUIRE_QEMU"):
        # Real-QEMU tests must run in CI: fail them loudly rather than skip.
        return
    skip = pytest.mark.skip(reason=f"{QEMU_BINARY} not installed")
    for item in items:
        if "qemu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def qemu_binary() -> str:
    path = shutil.which(QEMU_BINARY)
    if path is None:
        pytest.fail(f"{QEMU_BINARY} is required (CI installs qemu-system-x86)")
    return path


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short temporary directory: UNIX socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def storage() -> Iterator[Path]:
    """A storage directory (``driver.storage_dirs``) apart from the daemon's
    state directory (one holding or inside it is refused)."""
    path = Path(tempfile.mkdtemp(prefix="tc-img-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
