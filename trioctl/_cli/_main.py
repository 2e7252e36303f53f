"""The ``trioctl`` command group."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._daemon_cmd import daemon_main


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """trioctl: supervise QEMU VMs through QMP; stays responsive when they hang."""


@cli.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML file.")
@click.option("--listen", help="host:port (default 127.0.0.1:16509).")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Definitions, tokens.")
@click.option("--backend", type=click.Choice(["sim", "qemu"]), help="Default emulator.")
@click.option("--mode", type=click.Choice(["default", "legacy"]), help="legacy: pre-patch libvirt.")
@click.option("--print-config", is_flag=True, help="Print the full configuration and exit.")
@click.option(
    "--ready-file",
    type=click.Path(path_type=Path),
    help="Write the URL, token and pid here (JSON) once serving.",
)
def daemon(
    config_file: Path | None,
    listen: str | None,
    state_dir: Path | None,
    backend: str | None,
    mode: str | None,
    print_config: bool,
    ready_file: Path | None,
) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    sys.exit(daemon_main(config_file, listen, state_dir, backend, mode, print_config, ready_file))


def main() -> None:
    cli()
