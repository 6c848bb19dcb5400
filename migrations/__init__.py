"""Alembic migrations; ``service.core.migrate`` runs them."""
