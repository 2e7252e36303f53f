"""Sans-I/O protocol cores: bytes and text in, events out, no sockets.

Nothing in this package imports ``trio``, ``socket`` or ``trio_websocket``
(``tests/test_rpc_sansio.py`` checks it): the cores are driven by the Trio
shells in the modules above, and by plain synchronous tests.

- ``rpc``: JSON-RPC 2.0 envelopes, batches and error objects (both sides).
- ``qmp``: QMP framing, greeting and negotiation state, command ids.
"""
