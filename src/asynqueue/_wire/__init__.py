"""
The wire protocol shared by process workers (over a socketpair) and remote
workers (over TCP or TLS): framing, codec and iterator streaming.

`_framing`, `_codec` and `_streams` import only the standard library (and
cloudpickle, lazily), because child interpreters load them without importing
Twisted or the rest of asynqueue; so does `_relay` (calls relayed by a
server without unpickling). `_channel` is the reactor side and imports
Twisted, as do `_client` (the asking side of the conversation, for process
and remote workers alike), `_protocol` (frames over Twisted connections) and
`_auth` (the handshake of remote connections). This package's ``__init__``
must stay empty of imports for the same reason.
"""
