"""``trioctl.procfs``: the one ``/proc/PID/stat`` parser.

The command name may hold any byte but NUL (``) (``, spaces, newlines): the
parser must find the fields after it whatever it holds, on made-up lines
(Hypothesis) and on a real process that renamed itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from trioctl import procfs

# proc(5): 52 fields; pid and comm first, then these (3 to 52).
_FIELDS_AFTER_COMM = 50
_names = st.binary(max_size=64).filter(lambda b: b"\0" not in b) | st.sampled_from(
    [b") (", b"a) (b", b")", b"(", b"x\ny", b"))) ((( ", b"", b"R 1 2 3)"]
)
_numbers = st.integers(min_value=0, max_value=2**63 - 1)


def _line(pid: int, comm: bytes, state: bytes, fields: list[int]) -> bytes:
    return b"%d (%s) %s %s\n" % (pid, comm, state, b" ".join(b"%d" % f for f in fields))


@given(
    pid=st.integers(min_value=1, max_value=2**22),
    comm=_names,
    state=st.sampled_from([b"R", b"S", b"D", b"T", b"t", b"Z", b"X", b"I"]),
    fields=st.lists(_numbers, min_size=_FIELDS_AFTER_COMM - 1, max_size=_FIELDS_AFTER_COMM - 1),
)
def test_the_fields_after_any_command_name(
    pid: int, comm: bytes, state: bytes, fields: list[int]
) -> None:
    stat = procfs.parse_stat(_line(pid, comm, state, fields))
    # fields[k] is proc(5) field k + 4 (ppid is field 4).
    assert stat == procfs.ProcStat(
        pid=pid,
        comm=os.fsdecode(comm),
        state=state.decode(),
        ppid=fields[0],
        utime=fields[10],
        stime=fields[11],
        start_ticks=fields[18],
        rss_pages=fields[20],
    )
    assert os.fsencode(stat.comm) == comm
    assert stat.stopped == (state in b"Tt") and stat.ended == (state in b"ZX")
    assert stat.cpu_seconds == (fields[10] + fields[11]) / procfs.CLOCK_TICKS
    assert stat.rss_kib == fields[20] * procfs.PAGE_KIB


@given(st.binary(max_size=200))
def test_anything_else_is_a_value_error(data: bytes) -> None:
    try:
        procfs.parse_stat(data)
    except ValueError:
        pass


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no '(COMM)'"),
        (b"12 comm S 1 2 3", "no '(COMM)'"),
        (b"12 )comm( S 1", "no '(COMM)'"),
        (b"12 (comm) S 1 2 3\n", "6 fields"),
        (_line(12, b"c", b"SS", [0] * 49), "state 'SS'"),
        (b"12 (c) S " + b" ".join([b"0"] * 11 + [b"x"] + [b"0"] * 37), "invalid literal"),
    ],
)
def test_what_is_wrong_is_said(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        procfs.parse_stat(data)


@pytest.mark.slow
def test_a_real_process_with_a_hostile_name() -> None:
    """A child names itself ``) (x`` plus a newline (``/proc/self/comm``)."""
    name = ") (x\ny"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; open('/proc/self/comm', 'w').write(sys.argv[1]);"
            " print('ready', flush=True); sys.stdin.read()",
            name,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        stat = procfs.read_stat(child.pid)
        assert (stat.pid, stat.comm, stat.ppid) == (child.pid, name, os.getpid())
        assert stat.state in "RSD" and not stat.stopped and not stat.ended
        assert stat.rss_kib > 0 and stat.start_ticks > 0
        assert procfs.read_cmdline(child.pid)[-1] == name
        assert child.pid in procfs.pids()
    finally:
        child.kill()
        child.communicate(timeout=30)
    with pytest.raises(procfs.ProcessGone) as gone:
        procfs.read_stat(child.pid)
    assert isinstance(gone.value, ProcessLookupError) and gone.value.pid == child.pid
    with pytest.raises(ProcessLookupError):
        procfs.read_cmdline(child.pid)


def test_this_process() -> None:
    stat = procfs.read_stat(os.getpid())
    assert (stat.pid, stat.ppid, stat.state) == (os.getpid(), os.getppid(), "R")
    assert procfs.read_cmdline(os.getpid()) == sys.orig_argv
