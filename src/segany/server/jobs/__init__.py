"""Asynchronous prediction jobs: the SQLite store, workers, webhooks, quotas and output files."""
