"""The core: tasks, the pure scheduler, call records, the dispatcher, `TaskQueue` and
`AsyncWorker`. Imports only `_support`, `_iter`, `interfaces` and `errors`."""
