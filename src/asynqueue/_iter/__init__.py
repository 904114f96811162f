"""Iteration across the reactor/worker boundary: `Deferator`, `Prefetcherator`,
producers and consumers. The lowest private layer: imports only `errors`."""
