"""Thread workers: `ThreadWorker`, `ThreadQueue` and `deferToThread`."""
