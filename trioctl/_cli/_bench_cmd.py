"""``trioctl bench``: the stuck-VM benchmark suite, the same as ``python -m bench``.

The suite is the ``bench`` package of the source tree (it is not part of the
installed ``trioctl`` package), so this command works from a checkout's root,
where ``bench`` is importable. Every argument goes to the suite unchanged:
``trioctl bench storm --short``, ``trioctl bench --help``.
"""

from __future__ import annotations

import sys

import click


@click.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    }
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run the stuck-VM benchmarks (storm, destroy, restart, stop, throughput,
    scale); ``trioctl bench --help`` lists the options."""
    try:
        from bench.__main__ import main as bench_main
    except ImportError:
        click.echo(
            "trioctl bench: the benchmark suite (the bench package of the source tree) "
            "cannot be imported: run this from the root of a trioctl checkout",
            err=True,
        )
        sys.exit(2)
    sys.exit(bench_main(list(args)))
