"""The SQLAlchemy models and the Alembic migrations describe the same schema, on both backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData

from api.db.engine import make_engine, upgrade
from api.db.models import Base


def schema_diff(url: str, metadata: MetaData) -> list[Any]:
    """What ``alembic revision --autogenerate`` would write for the database at ``url``."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _supernet_and_stats(conn: Any) -> None:
    """Rows 1 of supernets and reference_stats, in the columns every revision since 0001 has, for a
    search row made at an older revision to point at."""
    conn.exec_driver_sql(
        "INSERT INTO supernets (id, name, status, artifact_sha256, config, created_at) "
        "VALUES (1, 'n', 'COMPLETE', 'a', '{}', CURRENT_TIMESTAMP)"
    )
    conn.exec_driver_sql(
        "INSERT INTO reference_stats (id, name, dataset, extractor, status, created_at) "
        "VALUES (1, 's', 'digits', 'domain', 'COMPLETE', CURRENT_TIMESTAMP)"
    )


def test_a_freshly_upgraded_database_matches_the_models(db_url: str) -> None:
    upgrade(db_url)
    assert schema_diff(db_url, Base.metadata) == []


def test_a_model_change_without_a_migration_is_seen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    upgrade(url)
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["candidates"].append_column(Column("priority", Integer, nullable=True))
    diff = schema_diff(url, changed)
    assert [(op[0], op[2], op[3].name) for op in diff] == [("add_column", "candidates", "priority")]


def test_latency_tables_upgrade_a_database_with_searches_and_downgrade_again(db_url: str) -> None:
    from api.db.engine import downgrade
    from api.db.repository import Repository

    upgrade(db_url, "0004")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:  # a search made before latency tables existed
            _supernet_and_stats(conn)
            conn.exec_driver_sql(
                "INSERT INTO searches (id, name, supernet_id, reference_stats_id, config, status, "
                "generation, created_at, updated_at) "
                "VALUES (1, 's', 1, 1, '{}', 'RUNNING', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        upgrade(db_url)
        assert schema_diff(db_url, Base.metadata) == []
        repo = Repository(engine)
        assert repo.get_search(1).latency_table_id is None  # type: ignore[union-attr]
        table = repo.create_latency_table(1, "float32", [1, 64], 3, 1)
        assert repo.list_latency_tables(1)[0].batch_sizes == [1, 64]
        assert repo.claim_latency_table(table, "w") and not repo.claim_latency_table(table, "w2")
        engine.dispose()
        downgrade(db_url, "0004")
        upgrade(db_url)  # and back: the downgrade left a clean 0004
        assert schema_diff(db_url, Base.metadata) == []
    finally:
        engine.dispose()


def test_searches_made_before_the_pick_rule_keep_the_weighted_pick(db_url: str) -> None:
    """0006: a stored search config without ``pick_rule`` (made when the weighted pick was the only
    rule) gets ``weighted``, so that a search running across the upgrade, or resumed later, is not
    switched to the new default; a config that names a rule is left alone."""
    from api.db.engine import downgrade
    from api.db.repository import Repository
    from ddsm_core.spec import SearchSpec

    upgrade(db_url, "0005")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            _supernet_and_stats(conn)
            for sid, config in ((1, '{"weight": 2.0}'), (2, '{"pick_rule": "tolerance"}')):
                conn.exec_driver_sql(
                    "INSERT INTO searches (id, name, supernet_id, reference_stats_id, config, status, "
                    f"generation, created_at, updated_at) VALUES ({sid}, 's', 1, 1, '{config}', 'RUNNING', "
                    "0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
        upgrade(db_url, "0006")
        repo = Repository(engine)
        old, new = repo.get_search(1), repo.get_search(2)
        assert old is not None and new is not None
        assert old.config == {"weight": 2.0, "pick_rule": "weighted"} and new.config == {
            "pick_rule": "tolerance"
        }
        assert SearchSpec.from_dict(old.config).pick_rule == "weighted"
        engine.dispose()
        downgrade(db_url, "0005")
        assert Repository(engine).get_search(1).config == {"weight": 2.0}  # type: ignore[union-attr]
        upgrade(db_url)
        assert schema_diff(db_url, Base.metadata) == []
    finally:
        engine.dispose()


def test_searches_made_before_held_out_final_seeds_keep_measuring_finalists_from_eval_seed(
    db_url: str,
) -> None:
    """0007: a stored search config without ``final_seed`` (made when the finalists were measured on
    the search's seeds, from ``eval_seed``) gets ``final_seed = eval_seed`` (0 when it names none), so a
    search running across the upgrade keeps one seed set for all its finalist rows; a config that
    names a final seed (null included: the default) is left alone; the downgrade takes the key out."""
    from api.db.engine import downgrade
    from api.db.repository import Repository
    from ddsm_core.spec import SearchSpec

    upgrade(db_url, "0006")
    engine = make_engine(db_url)
    configs = {1: '{"eval_seed": 7, "n_images": 20}', 2: "{}", 3: '{"final_seed": null}'}
    try:
        with engine.begin() as conn:
            _supernet_and_stats(conn)
            for sid, config in configs.items():
                conn.exec_driver_sql(
                    "INSERT INTO searches (id, name, supernet_id, reference_stats_id, config, status, "
                    f"generation, created_at, updated_at) VALUES ({sid}, 's', 1, 1, '{config}', 'FINISHING', "
                    "0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
        upgrade(db_url)
        repo = Repository(engine)
        got = {sid: repo.get_search(sid).config for sid in configs}  # type: ignore[union-attr]
        assert got == {1: {"eval_seed": 7, "n_images": 20, "final_seed": 7}, 2: {"final_seed": 0},
                       3: {"final_seed": None}}  # fmt: skip
        old = SearchSpec.from_dict(got[1])
        assert old.final_first_seed == 7 and not old.seeds()["held_out"]
        assert SearchSpec.from_dict(got[3]).final_first_seed == 200  # the default: after the search's 0..199
        engine.dispose()
        downgrade(db_url, "0006")
        assert Repository(engine).get_search(1).config == {"eval_seed": 7, "n_images": 20}  # type: ignore[union-attr]
        upgrade(db_url)
        assert schema_diff(db_url, Base.metadata) == []
    finally:
        engine.dispose()
