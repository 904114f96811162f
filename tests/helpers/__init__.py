"""Helpers shared by the tests. Kept import-free here: worker children import
`tests.helpers.process` and must not pull in Twisted through this package."""
