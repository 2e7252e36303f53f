"""The ``trioctl`` command group."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Final

import click

from .._client import DEFAULT_URL, TOKEN_ENV, URL_ENV
from ._client_cmds import register
from ._imports import no_gc_while_importing
from ._output import CliGroup, Settings

#: The environment variable for ``--tokens-file``.
TOKENS_FILE_ENV = "TRIOCTL_TOKENS_FILE"


class _LazyGroup(CliGroup):
    """Commands whose module is imported only when the command runs (or
    ``--help`` lists it): the client commands never load the daemon's side."""

    LAZY: Final = {"sim": ("trioctl._cli._sim_cmds", "sim")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            module, attr = self.LAZY[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--connect",
    "url",
    envvar=URL_ENV,
    default=DEFAULT_URL,
    show_default=True,
    show_envvar=True,
    metavar="URL",
    help="The daemon's WebSocket URL (admin commands use its /admin path).",
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    show_envvar=True,
    help="Bearer token. Default: the best one in the daemon's tokens file, if readable.",
)
@click.option(
    "--tokens-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=TOKENS_FILE_ENV,
    show_envvar=True,
    help="Where to look for a token (default: tokens.json in the default state directory).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the connection and handshake.",
)
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output (JSON).")
@click.pass_context
def cli(
    ctx: click.Context,
    url: str,
    token: str | None,
    tokens_file: Path | None,
    connect_timeout: float,
    json_output: bool,
) -> None:
    """trioctl: supervise QEMU VMs through QMP; stays responsive when they hang.

    Client commands connect to a daemon (-c, $TRIOCTL_URL). Exit status: 0 on
    success; 1 when the operation failed (stderr: "error: REASON: message");
    2 on bad usage or when the daemon cannot be reached or refuses the
    connection; 130 on Ctrl-C. With --json, stdout holds one JSON document:
    the result, or {"error": {"reason", "message", "data"}}.
    """
    source = ctx.get_parameter_source("token")
    ctx.obj = Settings(
        url=url,
        token=token or None,
        token_source=f"${TOKEN_ENV}"
        if source is click.core.ParameterSource.ENVIRONMENT
        else "--token",
        tokens_file=tokens_file,
        json=json_output,
        connect_timeout=connect_timeout,
    )


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
    """Run the daemon until SIGTERM or SIGINT; SIGHUP re-reads the tokens file."""
    with no_gc_while_importing():
        from ._daemon_cmd import daemon_main

    sys.exit(daemon_main(config_file, listen, state_dir, backend, mode, print_config, ready_file))


register(cli)


def main() -> None:
    cli()
