"""``python -m trioctl``: the same as the ``trioctl`` command."""

from trioctl._cli import main

main()
