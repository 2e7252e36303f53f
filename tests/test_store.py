"""Crash safety of the state files: a writer killed at any step loses nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trioctl._models import DomainDefinition
from trioctl._store import RuntimeRecord, Store, write_atomic

# A writer process that dies (SIGKILL, no cleanup) at a chosen step.
WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from trioctl._models import DomainDefinition
    from trioctl._store import Store

    state, step = Path(sys.argv[1]), sys.argv[2]
    real_replace, real_fsync = os.replace, os.fsync

    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)

    if step == "before-rename":
        os.replace = die
    elif step == "before-fsync":
        os.fsync = die
    store = Store(state, state / "run")
    store.save_definition(DomainDefinition(name="vm", memory_mib=999))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["before-fsync", "before-rename"])
def test_writer_killed_mid_write_loses_nothing(tmp_path: Path, step: str) -> None:
    store = Store(tmp_path, tmp_path / "run")
    store.save_definition(DomainDefinition(name="vm", memory_mib=256))
    result = subprocess.run(
        [sys.executable, "-c", WRITER, str(tmp_path), step], timeout=30, check=False
    )
    assert result.returncode == -signal.SIGKILL
    leftovers = list((tmp_path / "domains").glob(".*.tmp-*"))
    assert leftovers  # the dead writer left its temporary file behind
    definitions, problems = Store(tmp_path, tmp_path / "run").load_definitions()
    assert problems == []
    assert [(d.name, d.memory_mib) for d in definitions] == [("vm", 256)]  # the old one, whole
    assert not list((tmp_path / "domains").glob(".*.tmp-*"))  # cleaned at load


def test_completed_write_replaces(tmp_path: Path) -> None:
    store = Store(tmp_path, tmp_path / "run")
    store.save_definition(DomainDefinition(name="vm", memory_mib=256))
    store.save_definition(DomainDefinition(name="vm", memory_mib=512))
    (loaded,), _ = store.load_definitions()
    assert loaded.memory_mib == 512
    assert oct((tmp_path / "domains" / "vm.json").stat().st_mode & 0o777) == "0o600"


def test_torn_and_foreign_runtime_records_are_set_aside(tmp_path: Path) -> None:
    store = Store(tmp_path, tmp_path / "run")
    record = RuntimeRecord("a", 1, 2, "sim", 0.0)
    store.save_record(record)
    (tmp_path / "run" / "b.json").write_text('{"name": "b", "pid"')
    (tmp_path / "run" / "c.json").write_text(json.dumps({"name": "c", "pid": "x"}))
    (tmp_path / "run" / "d.json").write_text(json.dumps({"name": "d", "surprise": 1}))
    records, problems = store.load_records()
    assert records == {"a": record}
    assert sorted(Path(p.path).name for p in problems) == ["b.json", "c.json", "d.json"]
    for p in problems:
        assert p.moved_to is not None
        assert Path(p.moved_to).exists()
    # Setting aside twice never overwrites an earlier corrupt copy.
    (tmp_path / "run" / "b.json").write_text("{")
    _, again = store.load_records()
    assert again[0].moved_to is not None
    assert again[0].moved_to.endswith(".corrupt.1")


def test_a_record_whose_name_is_no_domain_name_is_set_aside(tmp_path: Path) -> None:
    # A record names a domain, and the loader joins that name to the run
    # directory (the domain's run directory, its socket): "..", found by an
    # outside trial as "...json", reached one level above it.
    store = Store(tmp_path, tmp_path / "run")
    run = tmp_path / "run"
    for stem in ("..", ".hidden", "-x", "a b"):
        (run / f"{stem}.json").write_text(json.dumps(attrs_record(stem)))
    store.save_record(RuntimeRecord("ok", 1, 2, "sim", 0.0))
    records, problems = store.load_records()
    assert list(records) == ["ok"]
    assert sorted(Path(p.path).name for p in problems) == sorted(
        ["...json", ".hidden.json", "-x.json", "a b.json"]
    )
    assert all("not a domain name" in p.reason for p in problems)


def attrs_record(name: str) -> dict[str, object]:
    return {
        "name": name, "pid": 1, "start_ticks": 2, "emulator": "sim", "started_at": 0.0,
        "state": "running", "shared": False,
    }  # fmt: skip


def test_write_atomic_leaves_no_temporary_on_success(tmp_path: Path) -> None:
    write_atomic(tmp_path / "f.json", b"{}")
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_load_scans_each_directory_once_and_keeps_every_check(tmp_path: Path) -> None:
    # The one-scandir load (issue 14 goal 5) sees what the glob saw and
    # refuses what it refused: a symlink, even to a directory, is set aside,
    # never followed; a real directory named like a record is a domain's run
    # directory, left alone; dead writers' temporaries go, other dot files stay.
    store = Store(tmp_path, tmp_path / "run")
    run, domains = tmp_path / "run", tmp_path / "domains"
    for name in ("b", "a", "c"):
        store.save_definition(DomainDefinition(name=name))
        store.save_record(RuntimeRecord(name, 1, 2, "sim", 0.0))
    (run / "x.json").mkdir()  # the run directory of a domain named "x.json"
    (run / "y.json").symlink_to(run / "x.json")
    (domains / "z.json").symlink_to(domains / "a.json")
    (run / ".a.json.tmp-0123").write_text("{")
    (domains / ".b.json.tmp-4567").write_text("{")
    (domains / ".keep.tmp").write_text("not a writer's temporary")
    definitions, problems = store.load_definitions()
    assert [d.name for d in definitions] == ["a", "b", "c"]
    assert [(Path(p.path).name, p.reason) for p in problems] == [("z.json", "is a symbolic link")]
    records, record_problems = store.load_records()
    assert list(records) == ["a", "b", "c"]
    assert [(Path(p.path).name, p.reason) for p in record_problems] == [
        ("y.json", "is a symbolic link")
    ]
    assert (run / "x.json").is_dir()
    assert not (run / ".a.json.tmp-0123").exists()
    assert not (domains / ".b.json.tmp-4567").exists()
    assert (domains / ".keep.tmp").exists()
