"""The ``concurrent.futures`` layer: executors on our queues (see `asynqueue.futures`)."""
