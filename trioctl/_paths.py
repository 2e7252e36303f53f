"""The default directories (state, runtime, tokens file), standard library only.

The XDG base directory spec for users, the FHS for root. The configuration
(:mod:`trioctl._config`) uses them for its defaults; the command-line client
uses :func:`default_tokens_file` to find a token without importing the
daemon's side.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["default_run_dir", "default_state_dir", "default_tokens_file"]


def _is_root(root: bool | None) -> bool:
    return os.geteuid() == 0 if root is None else root


def _xdg(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name, "")
    # The XDG spec: a relative path in these variables is invalid and ignored.
    return Path(value) if os.path.isabs(value) else None


def default_state_dir(
    environ: Mapping[str, str] | None = None, *, root: bool | None = None
) -> Path:
    """``driver.state_dir``'s default.

    ``/var/lib/trioctl`` for root, else ``$XDG_STATE_HOME/trioctl`` or
    ``~/.local/state/trioctl``. ``environ`` defaults to :data:`os.environ`,
    ``root`` to whether the effective user is root.
    """
    env = os.environ if environ is None else environ
    if _is_root(root):
        return Path("/var/lib/trioctl")
    state_home = _xdg(env, "XDG_STATE_HOME")
    if state_home is not None:
        return state_home / "trioctl"
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(os.path.abspath(home)) / ".local" / "state" / "trioctl"


def default_tokens_file(environ: Mapping[str, str] | None = None) -> Path:
    """``auth.tokens_file``'s default: ``tokens.json`` in the default state directory."""
    return default_state_dir(environ) / "tokens.json"


def default_run_dir(
    state_dir: Path, environ: Mapping[str, str] | None = None, *, root: bool | None = None
) -> Path:
    """``driver.run_dir``'s default when ``state_dir`` is the default too.

    ``$XDG_RUNTIME_DIR/trioctl`` if set, else ``/run/trioctl`` for root, else
    ``state_dir/run``. (When ``state_dir`` is set explicitly, :func:`load_config`
    uses ``state_dir/run``, so daemons with their own state directories never
    share runtime records.)
    """
    env = os.environ if environ is None else environ
    runtime = _xdg(env, "XDG_RUNTIME_DIR")
    if runtime is not None:
        return runtime / "trioctl"
    if _is_root(root):
        return Path("/run/trioctl")
    return state_dir / "run"
