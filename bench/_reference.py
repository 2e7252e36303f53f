"""libvirt 9.0.0 + QEMU 7.2, libvirtd with default settings, measured on this
kind of machine (2 vCPU, 24 GiB): the project's reference figures, which the
tables print beside trioctl's. Medians of 3 runs unless noted; the storm
figures come from 10 runs of 60 s (8 domains, 4 SIGSTOPped, 30 client
threads, probes every 0.2 s)."""

from __future__ import annotations

from typing import Final

__all__ = ["LIBVIRT", "STORM"]

#: Storm probes: (p50, p99, max) as text, by the bench's probe names.
STORM: Final[dict[str, tuple[str, str, str]]] = {
    "list": ("0.35-0.41 ms", "0.6-5.5 ms", "11 ms"),
    "info_hung": ("0.33-0.45 ms", "0.7-4.4 ms", "11 ms"),
    "monitor_healthy": ("29.8 s", "30 s", "> 60 s (none finished in 3 of 10 runs)"),
    "info_healthy": ("29.8 s", "30 s", "60 s, one 95 s"),
}

LIBVIRT: Final[dict[str, str]] = {
    "storm_hung_calls": 'fail after 30-60 s: "cannot acquire state change lock"',
    "destroy": "11.2-12.0 s (10 s SIGTERM grace, then SIGKILL, then slow reaping)",
    "destroy_list_max": "list blocked for the whole destroy (max 11.6 s)",
    "restart_first_call": "0.04-0.05 s (8 domains, 4 hung)",
    "restart_healthy": "0.07-0.10 s (8 domains, 4 hung)",
    "restart_hung_calls": "fail after 30 s (the reconnect holds their job)",
    "stop": "31.8 s (8 monitor calls in flight on hung domains)",
    "noop_1": "12,700-20,500 calls/s (getLibVersion, 1 client thread)",
    "noop_8": "27,700-35,000 calls/s (8 client threads)",
    "echo_1": "5,700 msg/s (trio-websocket echo, 1 connection, sequential)",
    "echo_16": "17,900 msg/s (trio-websocket echo, 16 connections)",
}
