"""Pooled PostgreSQL connections that the server dropped: pinged when idle, retried by the intake when busy."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from service.core.db import make_engine
from service.extensions import db
from service.core.schema import ApiKey, Sketch
from service.core.security import hash_api_key, new_api_key
from stack_fixtures import build_testing_app, terminate_pg_connections

URL = "/api/v1/sketches"
SQUARE = [[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]]


def _backend_pid(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(pg_url):
    engine = make_engine(pg_url, pool_size=1, max_overflow=0, ping_idle_s=0.0)
    try:
        first = _backend_pid(engine)
        assert terminate_pg_connections(pg_url) >= 1
        assert _backend_pid(engine) != first  # no error: the ping found it dead and the pool reconnected
    finally:
        engine.dispose()


def test_a_connection_used_moments_ago_is_not_pinged_so_its_loss_surfaces_as_invalidated(pg_url):
    engine = make_engine(pg_url, pool_size=1, max_overflow=0, ping_idle_s=3600.0)
    try:
        _backend_pid(engine)
        assert terminate_pg_connections(pg_url) >= 1
        with pytest.raises(DBAPIError) as lost:
            _backend_pid(engine)
        assert lost.value.connection_invalidated
        _backend_pid(engine)  # the pool was invalidated: the next checkout connects afresh
    finally:
        engine.dispose()


@pytest.fixture
def pg_app(pg_url, tmp_path):
    yield build_testing_app(pg_url, tmp_path)
    db.dispose()


def test_intake_retries_on_a_fresh_connection_when_the_pooled_one_died(pg_app, caplog):
    token = new_api_key()
    client_name = f"db-retry-{token[-6:]}"
    with pg_app.app_context(), db.session_scope() as s:
        s.add(ApiKey(name=client_name, prefix=token[:10], key_hash=hash_api_key(token)))
    http = pg_app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert http.post(URL, json={"drawing": SQUARE, "client_ref": "before"}, headers=headers).status_code == 202
    assert terminate_pg_connections(pg_app.config["DATABASE_URL"]) >= 1
    with caplog.at_level(logging.WARNING, logger="service.intake"):
        r = http.post(URL, json={"drawing": SQUARE, "client_ref": "after"}, headers=headers)
    assert r.status_code == 202, r.json
    assert any("connection lost while storing" in m for m in caplog.messages)
    with pg_app.app_context(), db.session_scope() as s:
        refs = s.scalars(select(Sketch.client_ref).where(Sketch.client == client_name).order_by(Sketch.id)).all()
        assert refs == ["before", "after"]
        assert s.scalar(select(func.count()).select_from(Sketch).where(Sketch.client == client_name)) == 2
