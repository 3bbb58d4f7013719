"""Alembic environment: the engine comes from the caller (``kei_gateway.adapters.ledger.db.upgrade``)."""

from alembic import context

from kei_gateway.adapters.ledger.models import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    context.run_migrations()
