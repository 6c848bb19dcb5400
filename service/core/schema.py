"""SQLAlchemy models: sketches, reviews, threshold history, users and API keys."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from models.formulas import logit_of_stored_score

from service.core.packing import PackedBitmap, PackedDrawing

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


def _logit_of_inserted_score(context) -> float | None:
    """An inserted row's score_logit when the writer gave a score but no log-odds: those of the score."""
    return logit_of_stored_score(context.get_current_parameters().get("score"))


class Base(DeclarativeBase):
    """Declarative base with the naming convention."""

    metadata = MetaData(naming_convention=NAMING)


class Sketch(Base):
    """One submitted drawing and, once scored, its result."""

    __tablename__ = "sketches"
    __table_args__ = (
        # A client_ref is unique per client through sketch_refs: a partitioned table's unique keys must hold
        # the partition key (see migration 0011).
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
        # "Highest score first" orders by the log-odds, which keep their order where scores tie at 1 (0007).
        Index("ix_sketches_flagged_score_logit", "flagged", "score_logit"),
        Index("ix_sketches_score_logit", "score_logit"),
        # Every query on verdict asks for reviewed sketches (=, IN, IS NOT NULL); the unreviewed rows, nearly
        # all of them, need no entry (migration 0010).
        Index(
            "ix_sketches_verdict",
            "verdict",
            postgresql_where=text("verdict IS NOT NULL"),
            sqlite_where=text("verdict IS NOT NULL"),
        ),
        # PostgreSQL: range partitions by submission time (service.core.partitions makes and drops them);
        # SQLite ignores this and keeps one table.
        {"postgresql_partition_by": "RANGE (submitted_at)"},
    )

    # The table's primary key is (id, submitted_at) because a partitioned table's keys must hold the partition
    # key; ids stay unique (one sequence), so the ORM identifies a row by its id alone (__mapper_args__).
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    client: Mapped[str] = mapped_column(String(100))
    client_ref: Mapped[str | None] = mapped_column(String(200))
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True, default=utcnow)
    scored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    source_format: Mapped[str] = mapped_column(String(20))
    # Strokes as normalised simplified lists ([[x..],[y..]] per stroke), stored packed (service.core.packing,
    # migration 0010); NULL for image submissions.
    drawing: Mapped[list | None] = mapped_column(PackedDrawing)
    meta: Mapped[dict | None] = mapped_column("metadata", JSON)
    # 784 raw bytes each (uint8 28x28) in Python, zlib-packed in the table. The input bitmap is stored only
    # for image submissions (a stroke submission's is its rasterized drawing), the reconstruction only for
    # sketches flagged when scored or computed on request; retention drops both (service.core.retention).
    input_bitmap: Mapped[bytes | None] = mapped_column(PackedBitmap)
    reconstruction: Mapped[bytes | None] = mapped_column(PackedBitmap)
    status: Mapped[str] = mapped_column(String(10), default=STATUS_QUEUED)
    score: Mapped[float | None] = mapped_column(Float)
    # log(score / (1 - score)) from the model's float64 sums (models.formulas): set whenever score is. Rows
    # scored before migration 0007 hold the log-odds of their stored float32 score (17.33 for a score of 1).
    score_logit: Mapped[float | None] = mapped_column(Float, default=_logit_of_inserted_score)
    flagged: Mapped[bool | None] = mapped_column(Boolean)
    threshold: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Latest staff verdict (dashboard reviewers, admin API keys), denormalised from reviews so gallery
    # filters need no join. Only these feed the threshold suggestions.
    verdict: Mapped[str | None] = mapped_column(String(10))
    # Latest verdict the submitting client recorded on its own sketch with its API key: its label, shown
    # back to it, never used for the shared threshold (one client must not steer every client's flags).
    client_verdict: Mapped[str | None] = mapped_column(String(10))

    __mapper_args__ = {"primary_key": [id]}

    # No foreign key points at sketches (partitioned on PostgreSQL): deleting a sketch deletes its reviews in
    # code (service.core.partitions, retention), and the relationship names its join.
    reviews: Mapped[list["Review"]] = relationship(
        back_populates="sketch",
        order_by="Review.created_at",
        cascade="all, delete-orphan",
        primaryjoin="Sketch.id == foreign(Review.sketch_id)",
    )


class Review(Base):
    """A reviewer's verdict on a sketch; the full history is kept."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sketch_id: Mapped[int] = mapped_column(BigId, index=True)
    verdict: Mapped[str] = mapped_column(String(10))
    reviewer: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # True for a client's label on its own sketch (client API key); False for a staff verdict.
    by_client: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    sketch: Mapped[Sketch] = relationship(back_populates="reviews", primaryjoin="foreign(Review.sketch_id) == Sketch.id")


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
    sketch_id: Mapped[int] = mapped_column(BigId, index=True)
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


# --------------------------------------------------------------------------- model registry (migration 0008)

MODEL_CANDIDATE = "candidate"
MODEL_SHADOW = "shadow"
MODEL_ACTIVE = "active"
MODEL_RETIRED = "retired"
MODEL_STATUSES = (MODEL_CANDIDATE, MODEL_SHADOW, MODEL_ACTIVE, MODEL_RETIRED)


class ModelVersion(Base):
    """One model version in the registry: where its artifact is, how it was made, its threshold and status.

    At most one version is ``active`` (scores and flags every new sketch) and at most one ``shadow`` (scores
    every new sketch alongside, into shadow_scores, without touching flags); service.core.registry owns
    every status change.
    """

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    parent_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100), default="")
    # The base files and the reviewed sketches it was trained on (see the training runs).
    data_fingerprint: Mapped[dict | None] = mapped_column(JSON)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    # The model's own threshold: score scales differ between versions, so promoting one applies its threshold.
    threshold: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(10), default=MODEL_CANDIDATE, index=True)
    # A path, file:// or http(s):// URL of a tar/zip artifact, or "shipped" (service.core.model_store).
    artifact_uri: Mapped[str] = mapped_column(Text)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    promoted_by: Mapped[str | None] = mapped_column(String(100))
    # The threshold in force when it was last active (reviewers may have retuned it): a rollback restores it.
    last_threshold: Mapped[float | None] = mapped_column(Float)


class ModelEvent(Base):
    """One registry action (bootstrap, shadow, unshadow, promote, rollback): who, when, from what to what.

    Replaying the promote and rollback events gives the stack of active versions a rollback walks back.
    """

    __tablename__ = "model_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(10))
    version: Mapped[str | None] = mapped_column(String(64))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(100))
    threshold: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ShadowScore(Base):
    """The shadow candidate's score of a sketch, scored alongside the active model (its flags stay the active one's)."""

    __tablename__ = "shadow_scores"
    __table_args__ = (Index("ix_shadow_scores_model_version_score", "model_version", "score"),)

    # No foreign key to sketches.id: sketches is partitioned on PostgreSQL.
    sketch_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    # Against the shadow version's own threshold.
    flagged: Mapped[bool] = mapped_column(Boolean)
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ScoreHistory(Base):
    """A sketch's score as it was before a re-scoring by another model version replaced it."""

    __tablename__ = "score_history"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign key to sketches.id: sketches is partitioned on PostgreSQL.
    sketch_id: Mapped[int] = mapped_column(BigInteger, index=True)
    model_version: Mapped[str | None] = mapped_column(String(64))
    score: Mapped[float | None] = mapped_column(Float)
    flagged: Mapped[bool | None] = mapped_column(Boolean)
    threshold: Mapped[float | None] = mapped_column(Float)
    scored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replaced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    replaced_by: Mapped[str] = mapped_column(String(64))
    rescore_job_id: Mapped[int | None] = mapped_column(Integer)


RESCORE_QUEUED = "queued"
RESCORE_RUNNING = "running"
RESCORE_DONE = "done"
RESCORE_CANCELLED = "cancelled"
RESCORE_FAILED = "failed"


class RescoreJob(Base):
    """A background re-scoring of the stored sketches by a newly active version, with its progress."""

    __tablename__ = "rescore_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_version: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(10), default=RESCORE_QUEUED)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Sketches to re-score when the job was made (scored by another version, id up to max_id) and how many are done.
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    max_id: Mapped[int] = mapped_column(BigInteger, default=0)
    # Keyset cursor: every sketch with a lower id has been handled.
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text)


# --------------------------------------------------------------------------- training runs (migration 0009)

TRAINING_QUEUED = "queued"
TRAINING_RUNNING = "running"
TRAINING_SUCCEEDED = "succeeded"
TRAINING_FAILED = "failed"
TRAINING_STATUSES = (TRAINING_QUEUED, TRAINING_RUNNING, TRAINING_SUCCEEDED, TRAINING_FAILED)


class TrainingRun(Base):
    """One training of a candidate model from the reviews: its progress while it runs, then its outcome.

    service.core.training_runs owns every change; the candidate it made is registered in model_versions
    (``candidate_version``) in the same transaction that marks the run succeeded.
    """

    __tablename__ = "training_runs"
    __table_args__ = (Index("ix_training_runs_status_created", "status", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(10), default=TRAINING_QUEUED)
    requested_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Last sign of life of the task (each epoch): a run "running" long after it was lost its worker.
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Deliveries of the task that started training: a delivery after a lost worker starts over, up to a limit.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    epoch: Mapped[int | None] = mapped_column(Integer)
    epochs: Mapped[int | None] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    parent_version: Mapped[str | None] = mapped_column(String(64))
    candidate_version: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    # Counts of the reviewed sketches (at request time, then as used), the base files, the split sizes.
    data_summary: Mapped[dict | None] = mapped_column(JSON)


# --------------------------------------------------------------------------- partitions and rollups (migration 0011)


class SketchRef(Base):
    """A client's own reference of a sketch, unique per client: a resubmission gets the stored id back.

    Kept apart from sketches because a partitioned table's unique keys must contain the partition key.
    """

    __tablename__ = "sketch_refs"

    client: Mapped[str] = mapped_column(String(100), primary_key=True)
    client_ref: Mapped[str] = mapped_column(String(200), primary_key=True)
    sketch_id: Mapped[int] = mapped_column(BigInteger, index=True)


# Fine score buckets of the histogram rollup: bucket b holds scores s with floor(s * SCORE_BUCKETS) == b,
# clamped to [0, SCORE_BUCKETS - 1]; any histogram edge is then exact from the rollup plus one index range.
SCORE_BUCKETS = 10000


class ScoreBucket(Base):
    """Rollup: stored scored sketches per client, model version, fine score bucket, flag and staff verdict.

    Database triggers append a +1/-1 row to score_bucket_deltas for every change of a scored row (insert,
    score, flag, verdict, model version, delete), so it is right after threshold changes, promotions and
    reviews alike; service.core.score_rollup folds the deltas in and reads both.
    """

    __tablename__ = "score_buckets"

    client: Mapped[str] = mapped_column(String(100), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    flagged: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    verdict: Mapped[str] = mapped_column(String(10), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


# Append-only and without any index, so the triggers of concurrent writers never wait on each other.
score_bucket_deltas = Table(
    "score_bucket_deltas",
    Base.metadata,
    Column("client", String(100), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("bucket", Integer, nullable=False),
    Column("flagged", Boolean, nullable=False),
    Column("verdict", String(10), nullable=False),
    Column("n", Integer, nullable=False),
)


class ReflagState(Base):
    """The re-flagging of stored sketches after a threshold change: which threshold, how far it got."""

    __tablename__ = "reflag_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    threshold: Mapped[float] = mapped_column(Float)
    # Only this model version's sketches (None: every scored sketch), as the change that started it.
    model_version: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    done: Mapped[int] = mapped_column(BigInteger, default=0)


# --------------------------------------------------------------------------- data lifecycle (migration 0010)


class RetentionPolicy(Base):
    """The retention limits an admin set on the dashboard (one row; absent: the SKETCHWATCH_RETENTION_* settings).

    A limit of None or 0 days keeps that data for ever. ``images_done_until`` is how far image dropping has got,
    so a run looks only at the sketches that aged past the limit since the last one.
    """

    __tablename__ = "retention_policy"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Bitmaps and reconstructions of unflagged, unreviewed sketches.
    images_days: Mapped[int | None] = mapped_column(Integer)
    # Whole unflagged, unreviewed sketches.
    sketches_days: Mapped[int | None] = mapped_column(Integer)
    # Flagged or reviewed sketches, with their review history.
    kept_days: Mapped[int | None] = mapped_column(Integer)
    images_done_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str | None] = mapped_column(String(100))


class RetentionChange(Base):
    """One change of the retention limits: who, when, from what to what."""

    __tablename__ = "retention_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    changed_by: Mapped[str] = mapped_column(String(100))
    before: Mapped[dict] = mapped_column(JSON)
    after: Mapped[dict] = mapped_column(JSON)


class RetentionRun(Base):
    """One retention run (beat, CLI or dashboard): what it removed, per kind, and the cutoffs it used."""

    __tablename__ = "retention_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    trigger: Mapped[str] = mapped_column(String(20))
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    removed: Mapped[dict] = mapped_column(JSON, default=dict)
    cutoffs: Mapped[dict] = mapped_column(JSON, default=dict)
