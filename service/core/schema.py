"""SQLAlchemy models: sketches, reviews, threshold history, users and API keys."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints keep Alembic autogenerate and SQLite batch migrations deterministic.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY, so BigInteger falls back to Integer there.
BigId = BigInteger().with_variant(Integer(), "sqlite")

STATUS_QUEUED = "queued"
STATUS_SCORED = "scored"
STATUS_FAILED = "failed"
VERDICT_ANOMALY = "anomaly"
VERDICT_CAT = "cat"
ROLE_REVIEWER = "reviewer"
ROLE_ADMIN = "admin"


def utcnow() -> datetime:
    """Timezone-aware current UTC time."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base with the naming convention."""

    metadata = MetaData(naming_convention=NAMING)


class Sketch(Base):
    """One submitted drawing and, once scored, its result."""

    __tablename__ = "sketches"
    __table_args__ = (
        UniqueConstraint("client", "client_ref", name="uq_sketches_client_client_ref"),
        Index("ix_sketches_status_submitted", "status", "submitted_at"),
        Index("ix_sketches_flagged_score", "flagged", "score"),
        Index("ix_sketches_score", "score"),
        # INCLUDE lets time-window histograms read scores from the index alone (PostgreSQL).
        Index("ix_sketches_submitted_at", "submitted_at", postgresql_include=["score", "model_version"]),
        # Partial indexes: the sweeper's queue scan and the "unreviewed flagged" gallery stay small
        # however many sketches are stored.
        Index(
            "ix_sketches_queued_id",
            "id",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
        Index(
            "ix_sketches_unreviewed_flagged_score",
            "score",
            postgresql_where=text("flagged AND verdict IS NULL"),
            sqlite_where=text("flagged AND verdict IS NULL"),
        ),
        # Flagged counts per model version or time window, from the index alone (see migration 0003).
        Index(
            "ix_sketches_flagged_submitted",
            "submitted_at",
            postgresql_include=["model_version"],
            postgresql_where=text("flagged"),
            sqlite_where=text("flagged"),
        ),
        Index("ix_sketches_model_version_score", "model_version", "score"),
        Index("ix_sketches_client_submitted", "client", "submitted_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    client: Mapped[str] = mapped_column(String(100))
    client_ref: Mapped[str | None] = mapped_column(String(200))
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    scored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    source_format: Mapped[str] = mapped_column(String(20))
    # Strokes as normalised simplified JSON ([[x..],[y..]] per stroke); NULL for image submissions.
    drawing: Mapped[list | None] = mapped_column(JSON)
    meta: Mapped[dict | None] = mapped_column("metadata", JSON)
    # 784 raw bytes each (uint8 28x28): compact and cheap to turn into thumbnails.
    input_bitmap: Mapped[bytes | None] = mapped_column(LargeBinary)
    reconstruction: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(10), default=STATUS_QUEUED)
    score: Mapped[float | None] = mapped_column(Float)
    flagged: Mapped[bool | None] = mapped_column(Boolean)
    threshold: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Latest verdict, denormalised from reviews so gallery filters need no join.
    verdict: Mapped[str | None] = mapped_column(String(10), index=True)

    reviews: Mapped[list["Review"]] = relationship(
        back_populates="sketch", order_by="Review.created_at", cascade="all, delete-orphan"
    )


class Review(Base):
    """A reviewer's verdict on a sketch; the full history is kept."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sketch_id: Mapped[int] = mapped_column(ForeignKey("sketches.id", ondelete="CASCADE"), index=True)
    verdict: Mapped[str] = mapped_column(String(10))
    reviewer: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    sketch: Mapped[Sketch] = relationship(back_populates="reviews")


class ThresholdChange(Base):
    """One change of the flagging threshold: who, when, from what to what, and why."""

    __tablename__ = "threshold_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    value: Mapped[float] = mapped_column(Float)
    previous: Mapped[float | None] = mapped_column(Float)
    changed_by: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class User(Base):
    """A dashboard login (reviewer or admin)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20), default=ROLE_REVIEWER)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    # Flask-Login protocol, kept here so the model needs no Flask import.
    @property
    def is_authenticated(self) -> bool:
        """Always true for a loaded user."""
        return True

    @property
    def is_active(self) -> bool:
        """Deactivated users cannot log in."""
        return bool(self.active)

    @property
    def is_anonymous(self) -> bool:
        """Loaded users are never anonymous."""
        return False

    def get_id(self) -> str:
        """Session identifier for Flask-Login."""
        return str(self.id)

    @property
    def is_admin(self) -> bool:
        """Admins change the threshold and manage users and keys."""
        return self.role == ROLE_ADMIN


class ApiKey(Base):
    """A client's API key; only its SHA-256 digest is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
