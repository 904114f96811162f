"""
The wire protocol shared by process workers (over a socketpair) and remote
workers (over TCP or TLS): framing, codec and iterator streaming.

`_framing`, `_codec` and `_streams` import only the standard library (and
cloudpickle, lazily), because child interpreters load them without importing
Twisted or the rest of asynqueue. `_channel` is the reactor side and imports
Twisted. This package's ``__init__`` must stay empty of imports for the same
reason.
"""
