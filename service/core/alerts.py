"""Alert rules: their definition, their evaluation, and the bookkeeping of their webhook notifications.

A rule compares a metric over a trailing window with a bound (above or below). The alerts worker evaluates
every enabled rule each ``SKETCHWATCH_ALERT_INTERVAL_S`` (a beat task) with :func:`evaluate`:

- a rule whose window holds fewer than ``min_count`` sketches is not judged: its state stays as it was
  (no data is not a recovery, nor an incident);
- an ``ok`` rule whose value is beyond its bound becomes ``firing`` and sends one ``firing`` notification;
  it stays firing, silently, while the value stays beyond;
- a ``firing`` rule whose value is back within its bound becomes ``ok`` and sends one ``resolved``.

A state change is a compare-and-set (``UPDATE ... WHERE state = <old>``) made in the same transaction as its
notification, so two evaluations racing each other (two beats, a slow run overlapping the next) notify once.

Metrics, over the sketches submitted in the window (``client``'s only, if the rule names one):

- ``flag_rate``: flagged (at scoring) / scored; judged on the scored count;
- ``volume``: sketches submitted; always judged (``min_count`` does not apply: a silent client is the point);
- ``failed``: sketches that failed scoring; judged on the submitted count (a sketch fails after its retries,
  minutes after submission: use windows of 15 minutes or more);
- ``queue_lag``: the longest wait, in seconds: submit-to-scored of the window's scored sketches, or the age
  of the oldest sketch still queued (a stalled worker raises it even when nothing new is scored); judged on
  the submitted count;
- ``drift``: the PSI of the window's scores against the drift reference (``service.core.drift``); judged on
  the scored count.

Each notification is a JSON body stored as sent and signed per webhook; its delivery to each webhook is a
row that the deliver task claims, attempts and reschedules with exponential backoff (``deliver``).
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service.core import drift, monitoring, webhooks
from service.core.model_info import model_meta
from service.core.rollups import as_datetime
from service.core.schema import (
    ALERT_FIRING,
    ALERT_OK,
    DELIVERY_DELIVERED,
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    NOTIFY_FIRING,
    NOTIFY_RESOLVED,
    NOTIFY_TEST,
    AlertNotification,
    AlertRule,
    AlertWebhook,
    WebhookAttempt,
    WebhookDelivery,
    utcnow,
)

log = logging.getLogger(__name__)

METRICS = ("flag_rate", "volume", "drift", "queue_lag", "failed")
DIRECTIONS = ("above", "below")
MAX_WINDOW_S = 30 * 86_400
MAX_WEBHOOKS = 10
MAX_SECRET = 256
MAX_ERROR_CHARS = 1000
HISTORY_PATH = "/alerts/history"


class RuleError(ValueError):
    """A rule that cannot be saved, naming the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class RuleSpec:
    """What an admin asks for: everything a rule is made of."""

    name: str
    metric: str
    direction: str
    bound: float
    window_s: int
    min_count: int = 0
    client: str | None = None
    webhooks: tuple[tuple[str, str], ...] = ()  # (url, secret)


def new_secret() -> str:
    """A random webhook secret, for admins who do not bring their own."""
    return secrets.token_urlsafe(32)


def check_spec(spec: RuleSpec, allowlist: webhooks.Allowlist, resolver: webhooks.Resolver = webhooks.resolve) -> RuleSpec:
    """The spec, cleaned, if every field is valid and every webhook URL allowed; RuleError otherwise."""
    name = (spec.name or "").strip()
    if not name or len(name) > 100 or "\x00" in name:
        raise RuleError("name", "must be 1-100 characters")
    if spec.metric not in METRICS:
        raise RuleError("metric", f"must be one of {', '.join(METRICS)}")
    if spec.direction not in DIRECTIONS:
        raise RuleError("direction", "must be above or below")
    if not isinstance(spec.bound, (int, float)) or not math.isfinite(spec.bound):
        raise RuleError("bound", "must be a finite number")
    if not 1 <= int(spec.window_s) <= MAX_WINDOW_S:
        raise RuleError("window", f"must be 1 to {MAX_WINDOW_S} seconds")
    if int(spec.min_count) < 0:
        raise RuleError("min_count", "must not be negative")
    client = (spec.client or "").strip() or None
    if client is not None and (len(client) > 100 or "\x00" in client):
        raise RuleError("client", "must be 1-100 characters")
    if not spec.webhooks:
        raise RuleError("webhook", "give at least one webhook URL")
    if len(spec.webhooks) > MAX_WEBHOOKS:
        raise RuleError("webhook", f"at most {MAX_WEBHOOKS} webhooks per rule")
    hooks = []
    for url, secret in spec.webhooks:
        try:
            webhooks.check_url(url, allowlist, resolver)
        except webhooks.WebhookURLError as exc:
            raise RuleError("webhook", str(exc)) from None
        secret = (secret or "").strip()
        if len(secret) < 8 or len(secret) > MAX_SECRET:
            raise RuleError("secret", f"each webhook needs a secret of 8 to {MAX_SECRET} characters")
        hooks.append((url.strip(), secret))
    return RuleSpec(
        name=name, metric=spec.metric, direction=spec.direction, bound=float(spec.bound), window_s=int(spec.window_s),
        min_count=int(spec.min_count), client=client, webhooks=tuple(hooks),
    )  # fmt: skip


def create_rule(session: Session, spec: RuleSpec, created_by: str) -> AlertRule:
    """Store a checked rule with its webhooks (RuleError when the name is taken)."""
    if rule_named(session, spec.name) is not None:
        raise RuleError("name", f"a rule named {spec.name!r} already exists")
    rule = AlertRule(
        name=spec.name, metric=spec.metric, direction=spec.direction, bound=spec.bound, window_s=spec.window_s,
        min_count=spec.min_count, client=spec.client, enabled=True, state=ALERT_OK, created_by=created_by,
    )  # fmt: skip
    rule.webhooks = [AlertWebhook(url=url, secret=secret) for url, secret in spec.webhooks]
    session.add(rule)
    session.flush()
    return rule


def rule_named(session: Session, name: str) -> AlertRule | None:
    """The rule called ``name``."""
    return session.execute(select(AlertRule).where(AlertRule.name == name)).scalar_one_or_none()


def list_rules(session: Session) -> list[AlertRule]:
    """Every rule, by name."""
    return list(session.execute(select(AlertRule).order_by(AlertRule.name)).scalars())


def delete_rule(session: Session, rule: AlertRule) -> None:
    """Delete a rule and its webhooks; its notifications stay in the history (pending deliveries fail)."""
    hook_ids = [h.id for h in rule.webhooks]
    if hook_ids:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.webhook_id.in_(hook_ids), WebhookDelivery.status == DELIVERY_PENDING)
            .values(status=DELIVERY_FAILED, last_error="the rule was deleted")
        )
    session.delete(rule)
    session.flush()


def describe(rule: AlertRule) -> str:
    """One line: 'flag_rate above 0.5 over 60 s (at least 20 sketches)'."""
    text = f"{rule.metric} {rule.direction} {rule.bound:g} over {rule.window_s} s"
    if rule.min_count and rule.metric != "volume":
        text += f" (at least {rule.min_count} sketches)"
    if rule.client:
        text += f", client {rule.client}"
    return text


# --------------------------------------------------------------------------- readings


@dataclass
class Reading:
    """A metric's value over a window and how many sketches it rests on."""

    value: float | None
    count: int

    def judged(self, rule: AlertRule) -> bool:
        """True when the rule may change state on this reading."""
        if self.value is None:
            return False
        return rule.metric == "volume" or self.count >= rule.min_count


def read_metric(session: Session, settings, metric: str, window_s: int, client: str | None, now: datetime) -> Reading:
    """The value of ``metric`` over the ``window_s`` seconds before ``now``."""
    since = now - timedelta(seconds=window_s)
    if metric == "drift":
        meta = model_meta(settings.model_dir)
        reference = drift.reference_for(session, settings.drift_reference, meta, since, client)
        result = drift.measure(session, reference, since, now, client, min_count=0)
        return Reading(result.psi, result.n)
    counts = monitoring.window_counts(session, since, now, client)
    if metric == "volume":
        return Reading(float(counts.submitted), counts.submitted)
    if metric == "failed":
        return Reading(float(counts.failed), counts.submitted)
    if metric == "flag_rate":
        return Reading(counts.flagged / counts.scored if counts.scored else None, counts.scored)
    if metric == "queue_lag":
        oldest = monitoring.oldest_queued(session, client)
        waits = [counts.lag_max_s or 0.0]
        if oldest is not None:
            waits.append(max(0.0, (now - oldest).total_seconds()))
        return Reading(max(waits), counts.submitted)
    raise ValueError(f"unknown metric {metric!r}")


def beyond(rule: AlertRule, value: float) -> bool:
    """True when ``value`` is on the wrong side of the rule's bound."""
    return value > rule.bound if rule.direction == "above" else value < rule.bound


# --------------------------------------------------------------------------- evaluation and notifications


@dataclass
class Transition:
    """A rule that changed state in an evaluation, with its notification."""

    rule: str
    state: str
    value: float
    notification_id: int
    deliveries: list[int]


def evaluate(session: Session, settings, now: datetime | None = None) -> list[Transition]:
    """Evaluate every enabled rule once; state changes notify (the caller commits, then sends the deliveries)."""
    now = as_datetime(now or utcnow())
    transitions = []
    rules = session.execute(select(AlertRule).where(AlertRule.enabled.is_(True)).order_by(AlertRule.id)).scalars().all()
    for rule in rules:
        try:
            reading = read_metric(session, settings, rule.metric, rule.window_s, rule.client, now)
        except Exception:  # noqa: BLE001 - one broken rule must not stop the others
            log.exception("alert rule %r could not be evaluated", rule.name)
            continue
        rule.last_value, rule.last_count, rule.evaluated_at = reading.value, reading.count, now
        if not reading.judged(rule):
            continue
        wanted = ALERT_FIRING if beyond(rule, reading.value) else ALERT_OK
        if wanted == rule.state:
            continue
        changed = session.execute(
            update(AlertRule)
            .where(AlertRule.id == rule.id, AlertRule.state == rule.state)
            .values(state=wanted, changed_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed != 1:
            continue  # another evaluation got there first and notified
        rule.state, rule.changed_at = wanted, now
        state = NOTIFY_FIRING if wanted == ALERT_FIRING else NOTIFY_RESOLVED
        note = notify(session, settings, rule, state, reading, now)
        transitions.append(
            Transition(rule.name, state, reading.value, note.id, [d.id for d in note.deliveries])
        )
        log.warning(
            "alert %s %s: %s = %.6g (bound %s %g)", rule.name, state, rule.metric, reading.value, rule.direction,
            rule.bound, extra={"rule": rule.name, "state": state, "value": reading.value, "count": reading.count},
        )  # fmt: skip
    return transitions


def payload(settings, rule: AlertRule, state: str, reading: Reading, at: datetime, notification_id: int) -> bytes:
    """The JSON body of a notification (the exact bytes that are signed and sent)."""
    base = settings.public_url.rstrip("/")
    body: dict[str, Any] = {
        "rule": rule.name,
        "metric": rule.metric,
        "value": reading.value,
        "bound": rule.bound,
        "direction": rule.direction,
        "window_s": rule.window_s,
        "count": reading.count,
        "min_count": rule.min_count,
        "client": rule.client,
        "state": state,
        "at": _iso_utc(at),
        "notification_id": notification_id,
        "dashboard_url": f"{base}{HISTORY_PATH}#notification-{notification_id}",
        "rule_url": f"{base}/alerts#rule-{rule.id}",
    }
    if state == NOTIFY_TEST:
        body["test"] = True
    return orjson.dumps(body)


def _iso_utc(at: datetime) -> str:
    """ISO 8601 in UTC with a Z: 2026-11-30T09:00:00.123456Z."""
    return as_datetime(at).replace(tzinfo=None).isoformat() + "Z"


def notify(session: Session, settings, rule: AlertRule, state: str, reading: Reading, now: datetime) -> AlertNotification:
    """Record a notification of ``rule`` and a pending delivery to each of its webhooks."""
    note = AlertNotification(
        rule_id=rule.id, rule_name=rule.name, metric=rule.metric, state=state, value=reading.value, bound=rule.bound,
        body="", created_at=now,
    )  # fmt: skip
    session.add(note)
    session.flush()
    note.body = payload(settings, rule, state, reading, now, note.id).decode()
    note.deliveries = [
        WebhookDelivery(webhook_id=hook.id, url=hook.url, status=DELIVERY_PENDING, attempts=0, next_attempt_at=now,
                        created_at=now)  # fmt: skip
        for hook in rule.webhooks
    ]
    session.flush()
    return note


def test_notification(session: Session, settings, rule: AlertRule, now: datetime | None = None) -> AlertNotification:
    """A ``test`` notification of ``rule`` with its current reading, to check its webhooks."""
    now = as_datetime(now or utcnow())
    try:
        reading = read_metric(session, settings, rule.metric, rule.window_s, rule.client, now)
    except Exception:  # noqa: BLE001 - a test send goes out even when the metric cannot be read
        reading = Reading(None, 0)
    return notify(session, settings, rule, NOTIFY_TEST, reading, now)


# --------------------------------------------------------------------------- delivery


def backoff(attempts: int, settings) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: backoff_s, 2x, 4x ... at most backoff_max_s."""
    return min(settings.webhook_backoff_max_s, settings.webhook_backoff_s * 2 ** max(0, attempts - 1))


@dataclass
class Claim:
    """A delivery held by one task for one attempt: what to send, and where."""

    delivery_id: int
    attempt: int
    url: str
    body: bytes
    secret: str | None
    state: str


def claim(session: Session, delivery_id: int, attempts: int, hold_s: float, now: datetime) -> Claim | None:
    """Take a pending delivery for its attempt number ``attempts + 1``; None when it is not ours to send.

    A stale task (the delivery moved on), a duplicate, or one arriving while another holds the delivery
    finds nothing to claim.
    """
    taken = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == DELIVERY_PENDING,
            WebhookDelivery.attempts == attempts,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
        )
        .values(claimed_until=now + timedelta(seconds=hold_s))
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:
        return None
    delivery = session.get(WebhookDelivery, delivery_id)
    hook = session.get(AlertWebhook, delivery.webhook_id) if delivery.webhook_id is not None else None
    note = delivery.notification
    return Claim(delivery.id, attempts + 1, delivery.url, note.body.encode(), hook.secret if hook else None, note.state)


@dataclass
class Outcome:
    """What became of a delivery after an attempt."""

    delivery_id: int
    attempts: int
    status: str
    retry_in: float | None = None
    result: webhooks.PostResult | None = None


def record(session: Session, settings, claimed: Claim, result: webhooks.PostResult, started: datetime) -> Outcome:
    """Store an attempt and move the delivery on: delivered, failed for good, or pending with its next time."""
    now = utcnow()
    delivery = session.get(WebhookDelivery, claimed.delivery_id)
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id, attempt=claimed.attempt, started_at=started, duration_ms=result.duration_ms,
            status_code=result.status_code, error=(result.error or None) and result.error[:MAX_ERROR_CHARS], ok=result.ok,
        )  # fmt: skip
    )
    delivery.attempts = claimed.attempt
    delivery.claimed_until = None
    outcome = Outcome(delivery.id, claimed.attempt, DELIVERY_PENDING, result=result)
    permanent = result.error is not None and result.error.startswith("refused:")
    if result.ok:
        delivery.status, delivery.delivered_at, delivery.last_error = DELIVERY_DELIVERED, now, None
        delivery.next_attempt_at = None
    elif permanent or claimed.attempt >= settings.webhook_max_attempts:
        delivery.status, delivery.last_error, delivery.next_attempt_at = DELIVERY_FAILED, result.error, None
    else:
        delay = backoff(claimed.attempt, settings)
        delivery.last_error = result.error
        delivery.next_attempt_at = now + timedelta(seconds=delay)
        outcome.retry_in = delay
    outcome.status = delivery.status
    return outcome


def deliver(session_scope, settings, delivery_id: int, attempts: int) -> Outcome | None:
    """One attempt of a delivery: claim it, POST it (no transaction open meanwhile), record what happened.

    ``session_scope`` is a context manager factory of committed sessions (``db.session_scope``). Returns
    None when the delivery was not ours to send.
    """
    allowlist = webhooks.parse_allowlist(settings.webhook_allowlist)
    hold_s = settings.webhook_timeout_s * 3 + 30.0
    started = utcnow()
    with session_scope() as session:
        claimed = claim(session, delivery_id, attempts, hold_s, started)
    if claimed is None:
        return None
    if claimed.secret is None:
        result = webhooks.PostResult(ok=False, error="refused: the webhook was deleted")
    else:
        headers = {
            webhooks.SIGNATURE_HEADER: webhooks.sign(claimed.body, claimed.secret),
            webhooks.EVENT_HEADER: claimed.state,
            webhooks.DELIVERY_HEADER: f"{claimed.delivery_id}.{claimed.attempt}",
        }
        result = webhooks.post(claimed.url, claimed.body, headers, allowlist, settings.webhook_timeout_s)
    with session_scope() as session:
        outcome = record(session, settings, claimed, result, started)
    level = logging.INFO if result.ok else logging.WARNING
    log.log(
        level, "webhook delivery %d attempt %d: %s", claimed.delivery_id, claimed.attempt,
        "delivered" if result.ok else result.error,
        extra={"delivery_id": claimed.delivery_id, "attempt": claimed.attempt, "status_code": result.status_code,
               "duration_ms": result.duration_ms, "retry_in": outcome.retry_in},
    )  # fmt: skip
    return outcome


def overdue(session: Session, settings, now: datetime | None = None) -> list[tuple[int, int]]:
    """(delivery id, attempts) of pending deliveries whose next attempt is well past due (their task was lost)."""
    now = as_datetime(now or utcnow())
    grace = timedelta(seconds=settings.webhook_timeout_s * 3 + 2 * settings.alert_interval_s + 30.0)
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.attempts)
        .where(
            WebhookDelivery.status == DELIVERY_PENDING,
            WebhookDelivery.next_attempt_at < now - grace,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
        )
        .order_by(WebhookDelivery.id)
        .limit(500)
    ).all()
    return [(int(i), int(n)) for i, n in rows]


def history(session: Session, limit: int = 100, rule: str | None = None) -> list[AlertNotification]:
    """The latest notifications, newest first, with their deliveries and attempts loaded."""
    from sqlalchemy.orm import selectinload

    stmt = (
        select(AlertNotification)
        .options(selectinload(AlertNotification.deliveries).selectinload(WebhookDelivery.attempt_log))
        .order_by(AlertNotification.id.desc())
        .limit(limit)
    )
    if rule:
        stmt = stmt.where(AlertNotification.rule_name == rule)
    return list(session.execute(stmt).scalars())
