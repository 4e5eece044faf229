"""Celery workers: ``app`` (the Celery app, made by a factory; torch-free), ``tasks`` (thin adapters),
``compute`` (the torch side), ``fast_eval`` (a trivial evaluator for benchmarks), ``cli`` (the
``ddsm worker`` command)."""
