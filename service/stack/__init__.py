"""Start and stop a whole SketchWatch stack from outside: the one harness of the tests, the bench and the soak.

A stack is the web server (granian, the command line of ``sketchwatch serve``), a Celery worker (the command
line of ``sketchwatch worker``) and, when asked, Celery beat in a process of its own, on a database and a
broker this module creates and cleans up: a fresh PostgreSQL database (created, migrated, dropped) or a
SQLite file, and a Redis DB index (flushed) or a private ``redis-server``. Every process runs in its own
process group with its log in the stack's work directory, and is stopped by that group with bounded waits,
so nothing outlives the stack. ``sketchwatch up`` supervises its processes with the same primitives
(``spawn``, ``wait_http``, ``stop_processes``).

One module per concern, all importable from here:

- ``commands``: the command lines of the processes (``serve_argv``, ``worker_argv``, ``alerts_worker_argv``,
  ``training_worker_argv``, ``beat_argv``), which
  the CLI uses too;
- ``processes``: starting a child in its own process group, waiting for it, signalling and stopping it;
- ``services``: a throwaway PostgreSQL database, a Redis DB index, a private ``redis-server``;
- ``harness``: ``Stack`` and ``StackConfig``, which put the three together.

Processes are started by command line only: this package imports neither ``worker`` nor ``bench``, and
importing it starts, creates and reads nothing.
"""

from service.stack.commands import (
    CELERY_APP,
    GRACEFUL_TIMEOUT_S,
    WSGI_TARGET,
    alerts_worker_argv,
    beat_argv,
    serve_argv,
    training_worker_argv,
    worker_argv,
)
from service.stack.harness import (
    READY_LINE,
    ROOT,
    WEB_READY_TIMEOUT_S,
    WORKER_READY_TIMEOUT_S,
    Stack,
    StackConfig,
    StackError,
)
from service.stack.processes import (
    STOP_TIMEOUT_S,
    free_port,
    kill_group,
    signal_quietly,
    spawn,
    stop_processes,
    wait_for,
    wait_group_gone,
    wait_http,
)
from service.stack.services import (
    PG_ADMIN_URL,
    RedisServer,
    create_pg_database,
    drop_pg_database,
    flush_redis,
    pg_admin,
    terminate_pg_connections,
)

__all__ = [
    "CELERY_APP", "GRACEFUL_TIMEOUT_S", "PG_ADMIN_URL", "READY_LINE", "ROOT", "STOP_TIMEOUT_S", "WEB_READY_TIMEOUT_S",
    "WORKER_READY_TIMEOUT_S", "WSGI_TARGET", "RedisServer", "Stack", "StackConfig", "StackError", "alerts_worker_argv", "beat_argv",
    "create_pg_database", "drop_pg_database", "flush_redis", "free_port", "kill_group", "pg_admin", "serve_argv",
    "signal_quietly", "spawn", "stop_processes", "terminate_pg_connections", "training_worker_argv", "wait_for", "wait_group_gone",
    "wait_http", "worker_argv",
]  # fmt: skip
