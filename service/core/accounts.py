"""Dashboard users and API keys: creating, revoking and looking them up.

The one place that writes ``users`` and ``api_keys`` rows, for the CLI, the admin pages, the first run of
``sketchwatch up`` and the bench. Callers pass a session (a plain ``Session`` or the app's scoped one) and
commit; they also check their own input rules (the CLI and the admin form differ).
"""

from __future__ import annotations

import secrets

from sqlalchemy import func, select

from service.core.schema import ROLE_ADMIN, ROLE_REVIEWER, ApiKey, User, utcnow
from service.core.security import hash_api_key, hash_password, new_api_key

# Shown next to a key so admins can tell keys apart without ever seeing them again.
KEY_PREFIX_CHARS = 12
FIRST_ADMIN = "admin"
FIRST_API_KEY_NAME = "default"


def username_taken(session, username: str) -> bool:
    """True when a user named ``username`` exists."""
    return session.execute(select(User.id).where(User.username == username)).first() is not None


def create_user(session, username: str, password: str, role: str = ROLE_REVIEWER) -> User:
    """Add an active user with the Argon2id hash of ``password``."""
    user = User(username=username, password_hash=hash_password(password), role=role, active=True)
    session.add(user)
    return user


def api_key_name_taken(session, name: str) -> bool:
    """True when an API key named ``name`` exists (revoked or not)."""
    return session.execute(select(ApiKey.id).where(ApiKey.name == name)).first() is not None


def create_api_key(session, name: str, admin: bool = False) -> str:
    """Store a new key named ``name`` (its digest only) and return the key itself.

    An ``admin`` key reads and reviews every client's sketches; any other key only its own.
    """
    key = new_api_key()
    session.add(ApiKey(name=name, prefix=key[:KEY_PREFIX_CHARS], key_hash=hash_api_key(key), admin=admin))
    return key


def api_key_named(session, name: str) -> ApiKey | None:
    """The API key row named ``name``, if any."""
    return session.execute(select(ApiKey).where(ApiKey.name == name)).scalar_one_or_none()


def revoke_api_key(key: ApiKey) -> bool:
    """Mark ``key`` revoked now; False when it already was."""
    if key.revoked_at is not None:
        return False
    key.revoked_at = utcnow()
    return True


def client_for_key_hash(session, key_hash: str) -> str | None:
    """The client name of the unrevoked key with this digest, else None."""
    identity = api_key_identity(session, key_hash)
    return identity[0] if identity is not None else None


def api_key_identity(session, key_hash: str) -> tuple[str, bool] | None:
    """(client name, admin) of the unrevoked key with this digest, else None."""
    row = session.execute(
        select(ApiKey.name, ApiKey.admin, ApiKey.revoked_at).where(ApiKey.key_hash == key_hash)
    ).first()
    if row is None or row.revoked_at is not None:
        return None
    return row.name, bool(row.admin)


def free_api_key_name(session, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever no key has yet."""
    taken = set(session.execute(select(ApiKey.name)).scalars())
    name, suffix = base, 1
    while name in taken:
        suffix += 1
        name = f"{base}-{suffix}"
    return name


def first_run_credentials(session) -> tuple[str, str, str] | None:
    """When there is no user yet: create an admin with a random password and an API key; else None."""
    if session.execute(select(func.count(User.id))).scalar_one():
        return None
    password = secrets.token_urlsafe(12)
    create_user(session, FIRST_ADMIN, password, ROLE_ADMIN)
    key = create_api_key(session, free_api_key_name(session, FIRST_API_KEY_NAME))
    return FIRST_ADMIN, password, key
