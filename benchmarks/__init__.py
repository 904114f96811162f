"""
The asynqueue benchmark suite: our queues side by side with their peers.

Run it from the repository root with ``python -m benchmarks`` (see
``benchmarks/README.md``).
"""
