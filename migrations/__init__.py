"""Alembic migrations; ``service.migrate`` runs them."""
