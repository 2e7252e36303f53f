"""``trioctl sim``: fault injection into simulated domains, around the daemon.

A hung domain's monitor is exactly what cannot be used to hang or heal it, so
these commands talk to the simulator process directly: faults go to its
control socket (``-sim-control``), ``stop``/``cont`` send SIGSTOP/SIGCONT to
its pid (a real hang: nothing in the process runs, the control socket
included).

Finding the process: by default, ask the daemon for the domain's pid
(``domain.get_info``, which never touches the monitor) and read the control
socket from the process's command line. With ``--state-dir``, ``--run-dir`` or
``--config``, read the daemon's runtime record ``RUN_DIR/NAME.json`` instead;
that works while the daemon is down.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from pathlib import Path
from typing import Any

import attrs
import click
import trio

from .. import procfs
from .._config import ConfigError, load_config
from .._errors import ConnectionLost, InvalidParams, QmpCommandError
from .._launcher import CONTROL_SOCKET, QemuProcess
from .._models import structure
from .._store import RuntimeRecord
from ..sim import control_request
from ._output import (
    EXIT_CONNECTION,
    CliFailure,
    Settings,
    echo_json,
    json_option,
    keyvalues,
    run_client,
    run_trio,
)

__all__ = ["sim"]

_META_KEY = "trioctl.sim"


@attrs.frozen
class _SimOptions:
    state_dir: Path | None
    run_dir: Path | None
    config_file: Path | None
    timeout: float


@attrs.frozen
class _Target:
    """A running domain's emulator process, as found."""

    name: str
    pid: int
    start_ticks: int | None
    """From the runtime record; None when found through the daemon."""
    control_path: str | None
    emulator: str


@click.group()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The daemon's state directory: read runtime records from it instead of asking the daemon.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The daemon's run directory (driver.run_dir), if not STATE_DIR/run.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The daemon's configuration file, to find its run directory.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the simulator's reply.",
)
@json_option
@click.pass_context
def sim(
    ctx: click.Context,
    state_dir: Path | None,
    run_dir: Path | None,
    config_file: Path | None,
    timeout: float,
) -> None:
    """Inject faults into simulated domains (talks to the simulator, not the daemon).

    hang, slow, drop, garbage and crash act on the QMP side through the
    simulator's control socket, which keeps answering; clear removes a lasting
    fault; state shows it. stop and cont send SIGSTOP and SIGCONT to the
    domain's process: a real hang, which works on any emulator.
    """
    ctx.meta[_META_KEY] = _SimOptions(state_dir, run_dir, config_file, timeout)


def _options() -> _SimOptions:
    options: _SimOptions = click.get_current_context().meta[_META_KEY]
    return options


def _run_dir(options: _SimOptions) -> Path | None:
    """The run directory to read records from; None: ask the daemon."""
    if options.run_dir is not None:
        return options.run_dir
    if options.state_dir is None and options.config_file is None:
        return None
    overrides = {} if options.state_dir is None else {"driver.state_dir": str(options.state_dir)}
    try:
        config = load_config(options.config_file, overrides=overrides)
    except ConfigError as exc:
        raise CliFailure("CONFIG_ERROR", str(exc), exit_code=EXIT_CONNECTION) from None
    return config.driver.run_dir


def _from_record(run_dir: Path, name: str) -> _Target:
    path = run_dir / f"{name}.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CliFailure(
            "NOT_RUNNING",
            f"no runtime record {path}: domain {name!r} is not running, or the "
            "daemon's run directory is elsewhere (--state-dir, --run-dir, --config)",
            data={"domain": name, "record": str(path)},
        ) from None
    except (OSError, ValueError) as exc:
        raise CliFailure("BAD_RECORD", f"cannot read {path}: {exc}") from None
    try:
        record = structure(raw, RuntimeRecord)
    except InvalidParams as exc:
        raise CliFailure("BAD_RECORD", f"{path}: {exc.message}") from None
    if record.pid is None:
        raise CliFailure(
            "NOT_RUNNING",
            f"domain {name!r} is starting (its record {path} names no process yet)",
            data={"domain": name, "record": str(path)},
        )
    # Records name processes, never paths: the control socket is derived.
    control_path = None if record.shared else str(run_dir / name / CONTROL_SOCKET)
    return _Target(name, record.pid, record.start_ticks, control_path, record.emulator)


def _control_path_of(pid: int) -> str | None:
    """The ``-sim-control unix:PATH`` of process ``pid``, from /proc.

    Raises:
        ProcessLookupError: no such process.
    """
    args = procfs.read_cmdline(pid)
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except FileNotFoundError:
        raise procfs.ProcessGone(pid) from None
    for option, value in itertools.pairwise(args):
        if option in ("-sim-control", "--sim-control") and value.startswith("unix:"):
            # QEMU's option syntax: ``,`` starts a sub-option, ``,,`` is a comma.
            path = value[len("unix:") :].replace(",,", "\0").split(",")[0].replace("\0", ",")
            return os.path.join(cwd, path)
    return None


def _from_daemon(settings: Settings, name: str) -> _Target:
    info = run_client(settings, lambda c: c.get_info(name))
    if info.pid is None:
        raise CliFailure(
            "NOT_RUNNING",
            f"domain {name!r} is not running ({info.state.value})",
            data={"domain": name, "state": info.state.value},
        )
    try:
        control_path = _control_path_of(info.pid)
    except (ProcessLookupError, PermissionError) as exc:
        raise CliFailure(
            "NOT_RUNNING",
            f"cannot inspect process {info.pid} of domain {name!r}: {exc!r} "
            "(the daemon must run on this machine)",
        ) from None
    return _Target(name, info.pid, None, control_path, info.emulator)


def _find(settings: Settings, name: str) -> _Target:
    run_dir = _run_dir(_options())
    if run_dir is None:
        return _from_daemon(settings, name)
    return _from_record(run_dir, name)


def _control(settings: Settings, target: _Target, execute: str, arguments: dict[str, Any]) -> Any:
    """One control-socket request, bounded by ``--timeout``."""
    path = target.control_path
    if path is None:
        raise CliFailure(
            "NOT_SIMULATED",
            f"domain {target.name!r} runs {target.emulator!r}, not the simulator: it has no "
            "control socket (sim stop and sim cont work on any emulator)",
            data={"domain": target.name, "emulator": target.emulator},
        )
    timeout = _options().timeout

    async def main() -> Any:
        with trio.move_on_after(timeout):
            try:
                return await control_request(path, execute, arguments)
            except OSError as exc:
                raise CliFailure(
                    "CONTROL_UNREACHABLE",
                    f"cannot connect to the simulator's control socket {path}: "
                    f"{exc.strerror or exc}",
                    data={"domain": target.name, "path": path},
                ) from None
            except QmpCommandError as exc:
                raise CliFailure(
                    "SIM_ERROR",
                    f"the simulator refused {execute}: {exc.desc}",
                    data={"domain": target.name, "error_class": exc.error_class},
                ) from None
            except ConnectionLost as exc:
                raise CliFailure("SIM_ERROR", exc.message, data={"domain": target.name}) from None
        raise CliFailure(
            "CONTROL_TIMEOUT",
            f"the simulator of domain {target.name!r} did not answer within {timeout:g} s "
            f"(is it stopped? try: trioctl sim cont {target.name})",
            data={"domain": target.name, "path": path},
        )

    return run_trio(settings, main, url=None)


_FAULT_TEXT = {
    "hang": "its QMP monitor stops answering (the control socket still does)",
    "drop": "its QMP connection was closed",
    "garbage": "bytes that are not JSON were written to its QMP connection",
}


def _inject(settings: Settings, name: str, mode: str, extra: dict[str, Any]) -> None:
    target = _find(settings, name)
    _control(settings, target, "x-trioctl-sim-fault", {"mode": mode, **extra})
    if settings.json:
        result = {"domain": name, "fault": mode}
        result.update({k.replace("-", "_"): v for k, v in extra.items()})
        echo_json(result)
        return
    if mode == "none":
        text = "fault cleared; its QMP monitor answers normally"
    elif mode == "slow":
        text = f"every QMP reply now waits {extra['delay']:g} s"
    elif mode == "crash":
        text = f"the simulator exits with code {extra['exit-code']}"
    else:
        text = _FAULT_TEXT[mode]
    click.echo(f"Domain {name}: {text}.")


def _fault_command(mode: str, help_text: str) -> click.Command:
    @sim.command(mode, help=help_text)
    @click.argument("domain")
    @json_option
    @click.pass_obj
    def command(settings: Settings, domain: str) -> None:
        _inject(settings, domain, mode, {})

    return command


hang = _fault_command("hang", "Make DOMAIN's QMP monitor stop answering (until clear).")
drop = _fault_command("drop", "Close DOMAIN's current QMP connection.")
garbage = _fault_command("garbage", "Write bytes that are not JSON to DOMAIN's QMP connection.")


@sim.command()
@click.argument("domain")
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds every QMP reply waits.",
)
@json_option
@click.pass_obj
def slow(settings: Settings, domain: str, delay: float) -> None:
    """Make DOMAIN's QMP replies wait DELAY seconds each (until clear)."""
    _inject(settings, domain, "slow", {"delay": delay})


@sim.command()
@click.argument("domain")
@click.option(
    "--exit-code",
    type=click.IntRange(0, 255),
    default=1,
    show_default=True,
    help="The simulator's exit status.",
)
@json_option
@click.pass_obj
def crash(settings: Settings, domain: str, exit_code: int) -> None:
    """Make DOMAIN's emulator exit at once, as if QEMU crashed."""
    _inject(settings, domain, "crash", {"exit-code": exit_code})


@sim.command()
@click.argument("domain")
@json_option
@click.pass_obj
def clear(settings: Settings, domain: str) -> None:
    """Remove DOMAIN's lasting fault (hang, slow)."""
    _inject(settings, domain, "none", {})


def _state(settings: Settings, name: str) -> None:
    target = _find(settings, name)
    state = _control(settings, target, "x-trioctl-sim-state", {})
    if settings.json:
        echo_json(state)
        return
    fault = state.get("fault", {})
    fault_text = str(fault.get("mode", "?"))
    if "delay" in fault:
        fault_text += f" ({fault['delay']:g} s)"
    click.echo(
        keyvalues(
            [
                ("Name", state.get("name")),
                ("Status", state.get("status")),
                ("Alive", state.get("alive")),
                ("Fault", fault_text),
                ("QMP client", state.get("connected")),
                ("Negotiated", state.get("negotiated")),
                ("PID", state.get("pid")),
                ("Control socket", target.control_path),
            ]
        )
    )


@sim.command()
@click.argument("domain")
@json_option
@click.pass_obj
def state(settings: Settings, domain: str) -> None:
    """The simulator's view of DOMAIN: run state, fault, QMP client."""
    _state(settings, domain)


def _signal(settings: Settings, name: str, sig: signal.Signals) -> None:
    target = _find(settings, name)
    try:
        proc = QemuProcess.attach(target.pid, target.start_ticks)
    except ProcessLookupError:
        raise CliFailure(
            "NOT_RUNNING",
            f"process {target.pid} of domain {name!r} is gone",
            data={"domain": name, "pid": target.pid},
        ) from None
    except PermissionError:
        raise CliFailure(
            "PERMISSION_DENIED",
            f"not allowed to signal process {target.pid} of domain {name!r}",
            data={"domain": name, "pid": target.pid},
        ) from None
    try:
        sent = proc.send_signal(sig)
    finally:
        proc.close()
    if not sent:
        raise CliFailure(
            "NOT_RUNNING",
            f"process {target.pid} of domain {name!r} has exited",
            data={"domain": name, "pid": target.pid},
        )
    if settings.json:
        echo_json({"domain": name, "pid": target.pid, "signal": sig.name})
    elif sig == signal.SIGSTOP:
        click.echo(
            f"Domain {name}: process {target.pid} stopped (SIGSTOP); "
            f"it answers nothing until: trioctl sim cont {name}"
        )
    else:
        click.echo(f"Domain {name}: process {target.pid} continued (SIGCONT).")


@sim.command()
@click.argument("domain")
@json_option
@click.pass_obj
def stop(settings: Settings, domain: str) -> None:
    """SIGSTOP DOMAIN's emulator process: a real hang."""
    _signal(settings, domain, signal.SIGSTOP)


@sim.command()
@click.argument("domain")
@json_option
@click.pass_obj
def cont(settings: Settings, domain: str) -> None:
    """SIGCONT DOMAIN's emulator process."""
    _signal(settings, domain, signal.SIGCONT)
