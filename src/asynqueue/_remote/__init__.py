"""Remote workers: the worker server, its client connections, the universe of
callable methods, and `WireWorker`, the client side."""
