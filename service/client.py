"""The HTTP client of the intake API: POST sketches to ``/api/v1/sketches`` and re-send what may be re-sent.

The one submitter of SketchWatch: ``sketchwatch submit``/``demo`` (service.cli_submit) and the soak
(bench.soak) both send through it. ``SubmitClient.post`` makes one attempt and turns every outcome into
an ``Answer`` (a request that got no answer is status 0, never an exception); ``post_with_retries``
repeats it under a ``RetryPolicy``, sleeping as long as a 429/503's ``Retry-After`` asks, until the
caller's ``settled`` test accepts an answer. What counts as settled, and what each answer means, stays
with the caller: the CLI stops at its attempt limit and reports, the soak keeps a ledger of every answer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import orjson

SUBMIT_PATH = "/api/v1/sketches"
# Answers that say "later" (rate limit, an outage behind the web server); a client may re-send.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# A Retry-After of 0 would make a client spin: it waits at least this long.
MIN_RETRY_AFTER_S = 0.1


@dataclass(frozen=True)
class Answer:
    """The outcome of one POST: the server's answer, or status 0 and the error when there was none."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased
    seconds: float = 0.0
    reason: str = ""
    error: BaseException | None = None
    # Which attempt of post_with_retries this answer came from.
    attempt: int = 1

    @property
    def timed_out(self) -> bool:
        """True when the request was sent but no answer came in time: the server may have stored it."""
        import requests

        return isinstance(self.error, requests.ReadTimeout)

    @property
    def unreachable(self) -> bool:
        """True when the connection failed or broke before any answer (not a read timeout)."""
        import requests

        return isinstance(self.error, requests.ConnectionError) and not self.timed_out

    def json(self) -> dict:
        """The body as a JSON object ({} when it is not one)."""
        try:
            body = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return {}
        return body if isinstance(body, dict) else {}

    def message(self) -> str:
        """What went wrong, in a line: the API's error, else the body text or reason, else the connection error."""
        if self.status == 0:
            return f"{type(self.error).__name__}: {self.error}"[:200]
        err = self.json().get("error")
        if isinstance(err, dict):
            return f"{err.get('field')}: {err.get('message')}" if err.get("field") else str(err.get("message"))
        return (self.body.decode(errors="replace") or self.reason or "").strip()[:200]

    def retry_after(self) -> float | None:
        """Seconds the ``Retry-After`` header asks for (at least MIN_RETRY_AFTER_S), None without a usable one."""
        value = self.headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(float(value), MIN_RETRY_AFTER_S)
        except ValueError:
            return None


class SubmitClient:
    """POSTs to the intake API of one server with one API key; a keep-alive session per thread."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.endpoint = self.url + SUBMIT_PATH
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._sessions: list = []
        self._lock = threading.Lock()

    def _session(self):
        """This thread's requests.Session (connections are reused across a thread's requests)."""
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def post(self, data: bytes | None = None, content_type: str | None = None, files=None) -> Answer:
        """One POST of a JSON body (``data``) or a multipart upload (``files``); every outcome is an Answer."""
        import requests

        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        started = time.monotonic()
        try:
            resp = self._session().post(self.endpoint, data=data, files=files, headers=headers, timeout=self.timeout_s)
        except (requests.ConnectionError, requests.Timeout) as exc:
            return Answer(0, seconds=time.monotonic() - started, error=exc)
        return Answer(
            resp.status_code,
            resp.content,
            {k.lower(): v for k, v in resp.headers.items()},
            time.monotonic() - started,
            resp.reason or "",
        )

    def close(self) -> None:
        """Close every thread's connections."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again: how many attempts (or for how long) and how long to wait between them.

    Between attempts the client sleeps what ``Retry-After`` asks, else the current delay, which starts
    at ``first_delay_s`` and is multiplied by ``backoff`` after every attempt; no sleep is longer than
    ``max_delay_s``.
    """

    max_attempts: int | None = 4
    give_up_s: float | None = None
    first_delay_s: float = 0.5
    backoff: float = 2.0
    max_delay_s: float = 10.0


def not_retryable(answer: Answer) -> bool:
    """The default ``settled`` test: anything but no answer or a RETRY_STATUSES answer is final."""
    return answer.status != 0 and answer.status not in RETRY_STATUSES


def post_with_retries(
    client: SubmitClient,
    policy: RetryPolicy = RetryPolicy(),
    settled: Callable[[Answer], bool] = not_retryable,
    cancelled: Callable[[], bool] | None = None,
    **request,
) -> Answer | None:
    """POST ``request`` (SubmitClient.post's arguments) until ``settled`` accepts an answer or the policy gives up.

    Returns the last answer (``.attempt`` says which attempt it was), or None when ``cancelled`` said
    stop before an attempt.
    """
    deadline = None if policy.give_up_s is None else time.monotonic() + policy.give_up_s
    delay = policy.first_delay_s
    attempt = 0
    while True:
        if cancelled is not None and cancelled():
            return None
        attempt += 1
        answer = replace(client.post(**request), attempt=attempt)
        if settled(answer):
            return answer
        if policy.max_attempts is not None and attempt >= policy.max_attempts:
            return answer
        wait = answer.retry_after()
        sleep = min(wait if wait is not None else delay, policy.max_delay_s)
        if deadline is not None and time.monotonic() + sleep >= deadline:
            return answer
        time.sleep(sleep)
        delay *= policy.backoff
