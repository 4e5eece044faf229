"""Celery workers: ``app`` (torch-free), ``tasks`` (thin adapters), ``compute`` (the torch side),
``fast_eval`` (a trivial evaluator for benchmarks)."""
