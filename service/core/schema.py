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
    false,
    text,
    true,
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
        # A client's own histogram and counts (API keys see only their sketches; see migration 0004).
        Index("ix_sketches_client_score", "client", "score"),
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
    # Latest staff verdict (dashboard reviewers, admin API keys), denormalised from reviews so gallery
    # filters need no join. Only these feed the threshold suggestions.
    verdict: Mapped[str | None] = mapped_column(String(10), index=True)
    # Latest verdict the submitting client recorded on its own sketch with its API key: its label, shown
    # back to it, never used for the shared threshold (one client must not steer every client's flags).
    client_verdict: Mapped[str | None] = mapped_column(String(10))

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
    # True for a client's label on its own sketch (client API key); False for a staff verdict.
    by_client: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

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
    # An admin key reads and reviews every client's sketches; a client key only its own.
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


STRATUM_ABOVE = "above"
STRATUM_BELOW = "below"


class AuditRound(Base):
    """A stratified random audit of the scored sketches: its frame, its strata and who started it.

    The frame is fixed when the round starts (sketches scored by ``created_at``, ids up to ``frame_max_id``), split at
    ``threshold`` into the sketches scoring above it and those at or below it; ``population_above`` and
    ``population_below`` are the strata sizes. Sketches are drawn at random within each stratum, so
    reviews of them estimate precision and recall for the whole frame (see service.quality).
    """

    __tablename__ = "audit_rounds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))
    threshold: Mapped[float] = mapped_column(Float)
    frame_max_id: Mapped[int] = mapped_column(BigInteger)
    population_above: Mapped[int] = mapped_column(Integer)
    population_below: Mapped[int] = mapped_column(Integer)


class AuditSample(Base):
    """One sketch drawn into an audit round, with its stratum; its verdict is the sketch's staff verdict."""

    __tablename__ = "audit_samples"
    __table_args__ = (UniqueConstraint("round_id", "sketch_id", name="uq_audit_samples_round_sketch"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("audit_rounds.id", ondelete="CASCADE"))
    sketch_id: Mapped[int] = mapped_column(ForeignKey("sketches.id", ondelete="CASCADE"), index=True)
    stratum: Mapped[str] = mapped_column(String(5))
    drawn_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# --------------------------------------------------------------------------- monitoring and alerts (migration 0005)

ALERT_OK = "ok"
ALERT_FIRING = "firing"
NOTIFY_FIRING = "firing"
NOTIFY_RESOLVED = "resolved"
NOTIFY_TEST = "test"
DELIVERY_PENDING = "pending"
DELIVERY_DELIVERED = "delivered"
DELIVERY_FAILED = "failed"


class StatsHourly(Base):
    """Rollup: one client's sketches submitted in one UTC hour, per model version ('' before scoring).

    Written only for hours that can no longer change (no sketch of theirs is still queued), so the
    overview's time series and the per-client page read a few thousand rows instead of every sketch.
    ``flagged`` counts flags as decided at scoring (score above the threshold then in force).
    """

    __tablename__ = "stats_hourly"
    __table_args__ = (Index("ix_stats_hourly_client_hour", "client", "hour"),)

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    client: Mapped[str] = mapped_column(String(100), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    submitted: Mapped[int] = mapped_column(Integer, default=0)
    scored: Mapped[int] = mapped_column(Integer, default=0)
    flagged: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    lag_sum_s: Mapped[float] = mapped_column(Float, default=0.0)
    lag_max_s: Mapped[float | None] = mapped_column(Float)
    # Scored sketches per score bin: a list of 100 counts, equal-width bins over [0, 1].
    score_bins: Mapped[list] = mapped_column(JSON, default=list)


class StatsRollupState(Base):
    """How far the hourly rollup reaches: every hour before ``rolled_until`` is in stats_hourly."""

    __tablename__ = "stats_rollup_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rolled_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Highest sketch id seen by the last refresh: rows above it with older times re-roll their hour.
    watermark_id: Mapped[int] = mapped_column(BigInteger, default=0)
    refreshed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AlertRule(Base):
    """An alert rule: a metric over a trailing window compared with a bound, and its current state."""

    __tablename__ = "alert_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    metric: Mapped[str] = mapped_column(String(20))
    direction: Mapped[str] = mapped_column(String(5))  # "above" or "below"
    bound: Mapped[float] = mapped_column(Float)
    window_s: Mapped[int] = mapped_column(Integer)
    min_count: Mapped[int] = mapped_column(Integer, default=0)
    # One client's sketches only (None: every client's).
    client: Mapped[str | None] = mapped_column(String(100))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    state: Mapped[str] = mapped_column(String(10), default=ALERT_OK)
    last_value: Mapped[float | None] = mapped_column(Float)
    last_count: Mapped[int | None] = mapped_column(Integer)
    evaluated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    webhooks: Mapped[list["AlertWebhook"]] = relationship(
        back_populates="rule", order_by="AlertWebhook.id", cascade="all, delete-orphan"
    )


class AlertWebhook(Base):
    """Where a rule's notifications go: a URL and the secret their HMAC signature is keyed with."""

    __tablename__ = "alert_webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    rule: Mapped[AlertRule] = relationship(back_populates="webhooks")


class AlertNotification(Base):
    """One notification of a rule (firing, resolved or a test), with the exact JSON body that was signed."""

    __tablename__ = "alert_notifications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # Kept when the rule is deleted: the history outlives it (rule_name says which it was).
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("alert_rules.id", ondelete="SET NULL"), index=True)
    rule_name: Mapped[str] = mapped_column(String(100))
    metric: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(10))
    value: Mapped[float | None] = mapped_column(Float)
    bound: Mapped[float] = mapped_column(Float)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)

    deliveries: Mapped[list["WebhookDelivery"]] = relationship(
        back_populates="notification", order_by="WebhookDelivery.id", cascade="all, delete-orphan"
    )


class WebhookDelivery(Base):
    """The delivery of one notification to one webhook: pending until delivered or out of attempts."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("alert_notifications.id", ondelete="CASCADE"), index=True)
    webhook_id: Mapped[int | None] = mapped_column(ForeignKey("alert_webhooks.id", ondelete="SET NULL"))
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10), default=DELIVERY_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A task holds the delivery until then, so a duplicated or re-sent task never posts it twice at once.
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    notification: Mapped[AlertNotification] = relationship(back_populates="deliveries")
    attempt_log: Mapped[list["WebhookAttempt"]] = relationship(
        back_populates="delivery", order_by="WebhookAttempt.id", cascade="all, delete-orphan"
    )


class WebhookAttempt(Base):
    """One POST of a delivery: when, how long, the receiver's status code or the error."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    ok: Mapped[bool] = mapped_column(Boolean, default=False)

    delivery: Mapped[WebhookDelivery] = relationship(back_populates="attempt_log")


class WorkerHeartbeat(Base):
    """The latest sign of life of one Celery worker (its main process writes it every few seconds)."""

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queues: Mapped[str] = mapped_column(String(200), default="")
    concurrency: Mapped[int | None] = mapped_column(Integer)
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
