"""Monitoring and alerts: the hourly rollup, alert rules with their webhooks, the notification history with
every delivery attempt, and worker heartbeats.

- ``stats_hourly`` + ``stats_rollup_state``: per (UTC hour, client, model version) counts, queue lag and a
  score histogram of the sketches submitted in that hour, written by the alerts worker once the hour can no
  longer change; the time series and the per-client page read these instead of every sketch.
- ``alert_rules`` / ``alert_webhooks``: admin-defined rules (metric, window, minimum count, bound) and the
  URLs (with HMAC secrets) their notifications are posted to.
- ``alert_notifications`` / ``webhook_deliveries`` / ``webhook_attempts``: every notification with its signed
  body, its delivery to each webhook and each POST attempt.
- ``worker_heartbeats``: the workers seen, for the health panel.

Only new tables: nothing existing is rewritten, so the upgrade is instant on a large database. The rollup
fills itself on the first refresh after the upgrade.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 09:00:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "stats_hourly",
        sa.Column("hour", TZ, nullable=False),
        sa.Column("client", sa.String(length=100), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("submitted", sa.Integer(), nullable=False),
        sa.Column("scored", sa.Integer(), nullable=False),
        sa.Column("flagged", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("lag_sum_s", sa.Float(), nullable=False),
        sa.Column("lag_max_s", sa.Float(), nullable=True),
        sa.Column("score_bins", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "client", "model_version", name=op.f("pk_stats_hourly")),
    )
    op.create_index("ix_stats_hourly_client_hour", "stats_hourly", ["client", "hour"])
    op.create_table(
        "stats_rollup_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rolled_until", TZ, nullable=True),
        sa.Column("watermark_id", sa.BigInteger(), nullable=False),
        sa.Column("refreshed_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stats_rollup_state")),
    )
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("metric", sa.String(length=20), nullable=False),
        sa.Column("direction", sa.String(length=5), nullable=False),
        sa.Column("bound", sa.Float(), nullable=False),
        sa.Column("window_s", sa.Integer(), nullable=False),
        sa.Column("min_count", sa.Integer(), nullable=False),
        sa.Column("client", sa.String(length=100), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("last_value", sa.Float(), nullable=True),
        sa.Column("last_count", sa.Integer(), nullable=True),
        sa.Column("evaluated_at", TZ, nullable=True),
        sa.Column("changed_at", TZ, nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_rules")),
        sa.UniqueConstraint("name", name=op.f("uq_alert_rules_name")),
    )
    op.create_table(
        "alert_webhooks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(length=256), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["alert_rules.id"], name=op.f("fk_alert_webhooks_rule_id_alert_rules"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_webhooks")),
    )
    op.create_index("ix_alert_webhooks_rule_id", "alert_webhooks", ["rule_id"])
    op.create_table(
        "alert_notifications",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=True),
        sa.Column("rule_name", sa.String(length=100), nullable=False),
        sa.Column("metric", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("bound", sa.Float(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["alert_rules.id"], name=op.f("fk_alert_notifications_rule_id_alert_rules"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_notifications")),
    )
    op.create_index("ix_alert_notifications_rule_id", "alert_notifications", ["rule_id"])
    op.create_index("ix_alert_notifications_created_at", "alert_notifications", ["created_at"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("notification_id", BigId, nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TZ, nullable=True),
        sa.Column("claimed_until", TZ, nullable=True),
        sa.Column("delivered_at", TZ, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["notification_id"], ["alert_notifications.id"],
            name=op.f("fk_webhook_deliveries_notification_id_alert_notifications"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["webhook_id"], ["alert_webhooks.id"],
            name=op.f("fk_webhook_deliveries_webhook_id_alert_webhooks"), ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index("ix_webhook_deliveries_notification_id", "webhook_deliveries", ["notification_id"])
    op.create_index("ix_webhook_deliveries_status_next", "webhook_deliveries", ["status", "next_attempt_at"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("delivery_id", BigId, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"], ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index("ix_webhook_attempts_delivery_id", "webhook_attempts", ["delivery_id"])
    op.create_table(
        "worker_heartbeats",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("queues", sa.String(length=200), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("seen_at", TZ, nullable=False),
        sa.Column("stopped_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_worker_heartbeats")),
    )


def downgrade() -> None:
    """Revert this revision (drops the rollup, the rules and the whole notification history)."""
    op.drop_table("worker_heartbeats")
    op.drop_index("ix_webhook_attempts_delivery_id", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_deliveries_status_next", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_notification_id", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_alert_notifications_created_at", table_name="alert_notifications")
    op.drop_index("ix_alert_notifications_rule_id", table_name="alert_notifications")
    op.drop_table("alert_notifications")
    op.drop_index("ix_alert_webhooks_rule_id", table_name="alert_webhooks")
    op.drop_table("alert_webhooks")
    op.drop_table("alert_rules")
    op.drop_table("stats_rollup_state")
    op.drop_index("ix_stats_hourly_client_hour", table_name="stats_hourly")
    op.drop_table("stats_hourly")
