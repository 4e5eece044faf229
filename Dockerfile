# ddsm service image: API, workers and trainer (the command picks the role; see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DDSM_HOME=/data OMP_WAIT_POLICY=PASSIVE
WORKDIR /app

# Dependencies first (cached layer), then the code.
COPY pyproject.toml README.md ./
RUN mkdir -p ddsm_core api workers && touch ddsm_core/__init__.py api/__init__.py workers/__init__.py \
    && pip install . && pip uninstall -y ddsm

COPY ddsm_core ./ddsm_core
COPY api ./api
COPY workers ./workers
COPY migrations ./migrations
COPY alembic.ini ./
# Editable, so that api/ finds alembic.ini and migrations/ beside it in /app (`ddsm up`, `ddsm migrate`).
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 ddsm && mkdir -p /data && chown ddsm /data

USER ddsm
EXPOSE 8000
CMD ["ddsm", "up", "--host", "0.0.0.0"]
