"""Process workers: the parent side, the lean child interpreter and the shared-memory
arenas between them. Speaks the wire protocol of `_wire` over a socketpair."""
