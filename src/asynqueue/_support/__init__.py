"""Small tools every layer above may use: Deferred helpers, call descriptions,
process helpers and the version."""
