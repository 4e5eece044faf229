"""The ddsm service: REST API (FastAPI), persistence (SQLAlchemy + Alembic), the search controller.

Module map: ``settings`` (one pydantic-settings class), ``db`` (tables, engine, the repository every
write goes through), ``artifacts`` (content-addressed store), ``queue`` (task names and Celery config
shared with the workers), ``controller`` (drives searches), ``ddsm_core.spec`` (a search's configuration),
``services`` + ``routes`` + ``schemas`` + ``deps`` (REST), ``report``, ``service_cmds`` / ``demo`` (the
service's commands), ``processes`` (starting the service's processes), ``cli`` (the ``ddsm`` entry that
composes every package's commands). Nothing here imports torch.
"""
