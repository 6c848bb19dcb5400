"""docker-compose.yml and the Dockerfile name real entry points (Docker itself cannot run here)."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = {"migrate", "web", "worker", "alerts", "training", "beat"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _sketchwatch_command_exists(args: list[str]) -> bool:
    from service.cli import main

    cmd: click.Command = main
    ctx = click.Context(main)
    for word in args:
        if word.startswith("-"):
            break
        if not isinstance(cmd, click.Group):
            break
        sub = cmd.get_command(ctx, word)
        if sub is None:
            return False
        cmd = sub
    return not isinstance(cmd, click.Group)


def assert_entry_point(argv: list[str]) -> None:
    """Fail unless ``argv`` starts a program and target that exist in this project."""
    prog = argv[0]
    if prog == "sketchwatch":
        assert _sketchwatch_command_exists(argv[1:]), f"'sketchwatch {' '.join(argv[1:])}' is not a command"
    elif prog == "celery":
        app_path = argv[argv.index("-A") + 1]
        mod = importlib.import_module(app_path)
        assert any(type(v).__name__ == "Celery" for v in vars(mod).values()), f"{app_path} has no Celery app"
        assert argv[argv.index("-A") + 2] in {"worker", "beat"}
        if "-Q" in argv:
            from service.core.celery_app import QUEUE

            assert argv[argv.index("-Q") + 1] == QUEUE
    else:
        pytest.fail(f"unknown program {prog}")


def test_compose_has_every_service_with_health_checks(compose):
    services = compose["services"]
    assert {"redis", "postgres", "web", "worker", "alerts", "training", "beat", "migrate"} <= set(services)
    for name in ("redis", "postgres", "web"):
        assert "healthcheck" in services[name], name
    assert "redis-data" in compose["volumes"] and "postgres-data" in compose["volumes"]


def test_app_services_share_one_image_and_production_env(compose):
    services = compose["services"]
    images = {services[n]["image"] for n in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["SKETCHWATCH_ENV"] == "production"
        assert env["SKETCHWATCH_BROKER_URL"].startswith("redis://redis:6379")
        assert env["SKETCHWATCH_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "${SKETCHWATCH_SECRET_KEY" in env["SKETCHWATCH_SECRET_KEY"], "secret must come from the environment"


def test_every_compose_command_names_a_real_entry_point(compose):
    for name in APP_SERVICES:
        assert_entry_point(compose["services"][name]["command"])


def test_dockerfile_cmd_is_a_real_command():
    text = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M)
    assert cmd, "Dockerfile has no exec-form CMD"
    assert_entry_point(ast.literal_eval(cmd.group(1)))
    for copied in re.findall(r"^COPY\s+(\S+)", text, re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies missing {copied}"


def test_unknown_entry_point_is_caught():
    with pytest.raises(AssertionError):
        assert_entry_point(shlex.split("sketchwatch no-such-command"))
