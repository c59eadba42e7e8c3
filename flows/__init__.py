"""Prefect flows and the ``tierembed`` command line."""
