"""The API contract: the OpenAPI document and the live server agree, in both directions (issue 19).

``schemathesis run`` (its command line, as a client's CI would run it) against a live stack: granian
serving the app on PostgreSQL and on SQLite, with the document it serves at ``/api/v1/openapi.json``.
Every check (``--checks all``: server errors, status codes, content types, headers and response schemas,
invalid requests rejected with a documented 4xx, valid requests accepted, missing auth, unsupported
methods, ...) in every phase: the document's examples, the coverage phase (boundary and near-boundary
values of every parameter and field), fuzzing, and the stateful phase, which chains operations through
the document's links (submit -> get -> review, list -> next page). Any failure fails the test, not only a
5xx. Generation is deterministic (``--generation-deterministic``), so a run is the same every time.

The rules JSON Schema cannot express (equal row lengths, the point limit, metadata size and depth, a
decodable image, ``since`` < ``until``) are stated in the document's descriptions and ``x-constraints``;
tests/contract_hooks.py makes generated valid requests follow them (and sends ndjson as lines).

Below the live run: structural checks of the document (security and JSON errors on every operation,
an example for every request body) and the examples accepted by the app, as a generated client would
send them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from service.api.openapi import build_document
from service.core.settings import get_settings

TESTS = Path(__file__).resolve().parent
HOOKS = TESTS / "contract_hooks.py"
# Examples per operation in the fuzzing phase (the coverage and stateful phases add their own).
MAX_EXAMPLES = 60
RUN_TIMEOUT_S = 900
PHASES = ("examples", "coverage", "fuzzing", "stateful")


# --------------------------------------------------------------------------- the live run


def _seed(live) -> None:
    """Sketches of every state for the stack's client, so answers carry every field's shapes."""
    from service.core.schema import Review, Sketch, utcnow

    square = [[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]]
    now = utcnow()
    client = live.config.client
    rows = [
        Sketch(client=client, source_format="simplified", drawing=square, status="scored", score=0.91, flagged=True,
               threshold=0.5, model_version="cat-ae-test", scored_at=now, attempts=1, verdict="anomaly",
               client_ref="seed-flagged", meta={"word": "cat", "nested": {"a": [1, 2.5, None, True]}}),
        Sketch(client=client, source_format="raw", drawing=square, status="scored", score=0.12, flagged=False,
               threshold=0.5, model_version="cat-ae-test", scored_at=now, attempts=1, client_verdict="cat"),
        Sketch(client=client, source_format="image", status="failed", error="could not decode", attempts=3,
               submitted_at=now - timedelta(days=2)),
        Sketch(client=client, source_format="simplified", drawing=square, status="queued", attempts=0),
        Sketch(client="someone-else", source_format="simplified", drawing=square, status="queued", attempts=0),
    ]  # fmt: skip
    with live.session() as s:
        s.add_all(rows)
        s.flush()
        s.add(Review(sketch_id=rows[0].id, verdict="anomaly", reviewer="rita", created_at=now))


# The model registry's operations (issue 16) answer only admin keys: a second pass runs them with one.
ADMIN_PATHS = r"^/models"
# The version the document's example names (service/api/models.py), registered so the examples reach it.
EXAMPLE_VERSION = "cat-ae-20261202-1"
# Few reviews are enough to queue a training run here (nothing consumes the training queue in this stack).
CONTRACT_ENV = {"SKETCHWATCH_TRAINING_MIN_REVIEWS": "2"}


def _seed_registry(live) -> None:
    """An admin key, the bootstrapped active model, a candidate with the example's version, usable reviews."""
    import shutil

    from service.core import registry
    from service.core.schema import ApiKey, Sketch
    from service.core.security import hash_api_key, new_api_key
    from service.core.settings import get_settings

    artifact = live.workdir / EXAMPLE_VERSION
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "shipped", artifact)
    meta = json.loads((artifact / "model.json").read_text())
    (artifact / "model.json").write_text(json.dumps({**meta, "version": EXAMPLE_VERSION}))
    live.admin_api_key = new_api_key()
    with live.session() as s:
        s.add(ApiKey(name="contract-admin", prefix=live.admin_api_key[:12], key_hash=hash_api_key(live.admin_api_key),
                     admin=True))
        active = registry.ensure_bootstrapped(s, get_settings({"env": "testing", "model_dir": live.model_dir}))
        registry.register(s, version=EXAMPLE_VERSION, artifact_uri=str(artifact), parent_version=active.version,
                          created_by="contract", threshold=0.5, metrics={"auroc": 0.97})
        s.add_all([Sketch(client="someone-else", source_format="simplified", status="scored", score=0.3 + i / 10,
                          flagged=False, threshold=0.5, model_version=active.version, attempts=1, verdict=verdict,
                          input_bitmap=bytes(784)) for i, verdict in enumerate(("cat", "anomaly", "cat"))])


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def live(request, stack):
    """A web server (no worker: nothing needs scoring) on the backend, seeded with sketches of every state."""
    made = stack(backend=request.param, concurrency=0, beat=False, env=CONTRACT_ENV)
    _seed(made)
    _seed_registry(made)
    return made


def run_schemathesis(url: str, api_key: str, workdir: Path, paths: str | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """``schemathesis run`` against ``url`` with every check and phase (the operations whose path matches ``paths``,
    default all); its output and its JSON report."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / "schemathesis.json"
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{url}/api/v1/openapi.json",
        "--checks", "all",
        "--phases", ",".join(PHASES),
        "--max-examples", str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--workers", "1",
        "--header", f"Authorization: Bearer {api_key}",
        "--report", "json", "--report-json-path", str(report),
        "--no-color",
        *(["--include-path-regex", paths] if paths else []),
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)}
    # Run from the work directory: nothing schemathesis writes lands in the repository.
    proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    return proc, json.loads(report.read_text()) if report.exists() else {}


def _check_run(proc, report, tested: set[str], reached: set[str]) -> None:
    """One schemathesis run found nothing: ``tested`` all tested, ``reached`` answered past authorization."""
    output = proc.stdout + proc.stderr
    print(output)
    summary = output[output.find("=== FAILURES") :] if "=== FAILURES" in output else output[-6000:]
    assert proc.returncode == 0, f"schemathesis found mismatches between the document and the server:\n{summary[:30000]}"
    assert report["complete"] and report["stop_reason"] == "completed", report
    assert report["failures"] == [] and report["errors"] == [], report
    assert report["operations"]["tested"] == report["operations"]["selected"] == len(tested), report["operations"]
    assert set(report["valid_rates"]) == reached, sorted(report["valid_rates"])
    assert {name: report["phases"][name]["status"] for name in PHASES} == dict.fromkeys(PHASES, "success"), report["phases"]
    assert report["test_cases"]["generated"] >= MAX_EXAMPLES * len(tested), report["test_cases"]


def test_the_live_api_keeps_its_openapi_contract(live, tmp_path):
    """Every schemathesis check, every phase, every operation: no mismatch between document and server.

    A client key calls every operation (the registry's answer it 403); an admin key then calls the registry's.
    """
    # schemathesis tests every operation but the document's own (GET /openapi.json, where it loaded it from).
    tested = {f"{m.upper()} {p}" for p, ops in live_document(live)["paths"].items() for m in ops} - {"GET /openapi.json"}
    admin_only = {label for label in tested if re.match(ADMIN_PATHS, label.split(" ", 1)[1])}
    assert len(admin_only) == 7, admin_only
    proc, report = run_schemathesis(live.url, live.api_key, tmp_path / "client")
    _check_run(proc, report, tested, tested - admin_only)
    proc, report = run_schemathesis(live.url, live.admin_api_key, tmp_path / "admin", paths=ADMIN_PATHS)
    _check_run(proc, report, admin_only, admin_only)


def live_document(live) -> dict:
    """The document the live server serves."""
    import requests

    return requests.get(f"{live.url}/api/v1/openapi.json", timeout=10).json()


# --------------------------------------------------------------------------- the document's structure


@pytest.fixture(scope="module")
def doc() -> dict:
    import service.api.routes  # noqa: F401 - every route module registers its operations

    return build_document(get_settings({"env": "testing"}))


def _resolve(doc: dict, node: dict) -> dict:
    while "$ref" in node:
        section, kind, name = node["$ref"].split("/")[1:]
        node = doc[section][kind][name]
    return node


def _operations(doc: dict):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield f"{method.upper()} {path}", op


def test_every_operation_declares_security_and_json_errors(doc):
    """Security on every operation but the document's own; each error answer is the JSON error body."""
    for label, op in _operations(doc):
        public = op["operationId"] == "openapi"
        assert op["security"] == [] if public else op["security"], label
        if not public:
            assert op["security"][0] == {"apiKey": []}, label
            assert {"401", "429", "503"} <= set(op["responses"]), (label, sorted(op["responses"]))
        if any(p["in"] == "path" for p in op.get("parameters", ())):
            assert "404" in op["responses"], label
        if "requestBody" in op or any(p["in"] == "query" for p in op.get("parameters", ())):
            assert "400" in op["responses"], label
        if "requestBody" in op:
            assert "413" in op["responses"], label
        for status, response in op["responses"].items():
            response = _resolve(doc, response)
            schema = response["content"]["application/json"]["schema"]
            assert schema, (label, status, "a response without a schema")
            if status >= "400":
                assert {"$ref": "#/components/schemas/ErrorOut"} in [schema, *schema.get("oneOf", [])], (label, status)
            if status in ("429", "503"):
                assert response["headers"]["Retry-After"]["required"], (label, status)


def test_every_request_body_has_examples_that_validate(doc):
    """Every request body (each media type) has examples, and they are valid by the document's own schema."""
    import jsonschema
    from referencing import Registry, Resource

    registry = Registry().with_resource("urn:doc", Resource.from_contents({**doc, "$schema": "https://json-schema.org/draft/2020-12/schema"}))
    for label, op in _operations(doc):
        for media, content in op.get("requestBody", {}).get("content", {}).items():
            assert content.get("examples"), (label, media)
            if media == "multipart/form-data":
                continue  # the example stands for a binary file
            validator = jsonschema.Draft202012Validator(_absolute(content["schema"]), registry=registry)
            for name, example in content["examples"].items():
                errors = [e.message for e in validator.iter_errors(example["value"])]
                assert not errors, (label, media, name, errors[:3])


def _absolute(schema):
    """``schema`` with its document-relative references made absolute (urn:doc)."""
    if isinstance(schema, dict):
        return {k: ("urn:doc" + v if k == "$ref" else _absolute(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_absolute(v) for v in schema]
    return schema


def test_the_request_examples_are_accepted_as_a_generated_client_sends_them(sqlite_app, doc):
    """Each example, sent as it stands, is stored: the JSON ones and the ndjson lines."""
    from service.core.accounts import create_api_key
    from service.extensions import db

    with sqlite_app.app_context(), db.session_scope() as s:
        key = create_api_key(s, "examples")
    client = sqlite_app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    content = doc["paths"]["/sketches"]["post"]["requestBody"]["content"]
    for name, example in content["application/json"]["examples"].items():
        r = client.post("/api/v1/sketches", json=example["value"], headers=headers)
        assert r.status_code == 202, (name, r.json)
        if isinstance(example["value"], list):
            assert r.json["accepted"] == len(example["value"]) and r.json["rejected"] == 0, (name, r.json)
    for name, example in content["application/x-ndjson"]["examples"].items():
        body = b"".join(json.dumps(line).encode() + b"\n" for line in example["value"])
        r = client.post("/api/v1/sketches", data=body, headers=headers, content_type="application/x-ndjson")
        assert r.status_code == 202 and r.json["rejected"] == 0, (name, r.json)
    sid = r.json["items"][0]["id"]
    review = doc["paths"]["/sketches/{id}/review"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    for name, example in review.items():
        r = client.post(f"/api/v1/sketches/{sid}/review", json=example["value"], headers=headers)
        assert r.status_code == 201, (name, r.json)
