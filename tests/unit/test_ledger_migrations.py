"""The ledger's Alembic migrations, up to head and back down, on SQLite and on PostgreSQL (SPEC §6)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from kei_gateway.adapters.ledger import Base, create_ledger_engine, current_revision, head_revision, upgrade
from kei_gateway.adapters.ledger.db import _MIGRATIONS, _alembic_config

TABLES = {"transfers", "payment_results", "audit", "audit_head", "nodes", "leases"}


@pytest.fixture
def engine(ledger_url: str) -> Iterator[Engine]:
    engine = create_ledger_engine(ledger_url)
    yield engine
    engine.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def revisions() -> list[str]:
    return [script.revision for script in reversed(list(ScriptDirectory(str(_MIGRATIONS)).walk_revisions()))]


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    command.downgrade(_alembic_config(engine), revision)


def test_when_migrated_to_head_then_every_table_is_there_and_matches_the_models(engine: Engine) -> None:
    assert upgrade(engine) == head_revision()
    assert tables(engine) == TABLES
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                       Base.metadata)
    assert differences == [], "the migrations and kei_gateway/ledger/models.py disagree"
    assert upgrade(engine) == head_revision(), "a second upgrade is a no-op"


def test_when_migrated_one_step_at_a_time_up_and_down_then_each_step_works_and_base_is_empty(engine: Engine) -> None:
    steps = revisions()
    assert steps[-1] == head_revision()
    for revision in steps:
        assert upgrade(engine, revision) == revision
    for previous in reversed(["base", *steps[:-1]]):
        downgrade(engine, previous)
        assert current_revision(engine) == (None if previous == "base" else previous)
    assert tables(engine) == set(), "downgrading to base drops every ledger table"
    assert upgrade(engine) == head_revision(), "and the schema can be built again from nothing"
    assert tables(engine) == TABLES
