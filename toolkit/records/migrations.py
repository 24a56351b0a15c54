"""The leaderboard file's schema: created on first use and upgraded in place, never losing rows.

Missing tables are created, missing columns are added with ALTER TABLE (NULL in older rows) and
missing indexes are made; PRAGMA user_version records SCHEMA_VERSION. Changes are additive only
(no column is removed or renamed), so an older toolkit can still read and write a newer file.
"""
from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import Table
from sqlmodel import SQLModel

SCHEMA_VERSION = 5   # 2: run.flip_tta, run.post_processing, run.plain_score; 3: run.validation_low/high, run.chosen;
                     # 4: run.run_key, unique with race_id (NULL in older rows, which stay as they are);
                     # 5: the run_rankings table (none for older runs, which are re-created when shown)


def create_or_upgrade(engine: Any, tables: Sequence[Table]) -> int:
    """Create missing tables, add missing columns and indexes, record the schema version; return it."""
    with engine.begin() as connection:          # one process at a time (the store begins IMMEDIATE)
        found = connection.exec_driver_sql("PRAGMA user_version").scalar() or 0
        SQLModel.metadata.create_all(connection, tables=list(tables))
        for table in tables:
            present = {row[1] for row in connection.exec_driver_sql(f'PRAGMA table_info("{table.name}")')}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=connection.dialect)
                    connection.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}')
            for index in table.indexes:
                index.create(connection, checkfirst=True)
        if found < SCHEMA_VERSION:
            connection.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return max(found, SCHEMA_VERSION)
