"""Persistence that outlives runs: the spend ledger (and what else a run must find again).

Storage, not orchestration: nothing here imports Beam or Prefect, so flows, Beam workers and
the command line share one implementation.
"""
