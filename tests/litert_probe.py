"""A task that reports what a pool process has imported, for tests/test_litert.py.

A test worker loads it with ``CELERY_WORKER_INCLUDE=tests.litert_probe`` (celery's ``--include`` read
from the environment); production workers never do. The task runs in a real pool process, after the
tasks before it, and writes its findings to a file the test names.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from service.core.celery_app import celery_app

PROBE_TASK = "sketchwatch.test.report_modules"
# Top-level packages that would mean the pool process carries a training framework or a JIT compiler
# (the stroke kernels are compiled C: numba and its LLVM cost a pool process about 106 MB).
HEAVY = ("tensorflow", "keras", "tf_keras", "tensorboard", "jax", "torch", "numba", "llvmlite")


@celery_app.task(name=PROBE_TASK)
def report_modules(path: str) -> None:
    """Write {pid, heavy modules in sys.modules, LiteRT loaded?, the scorer's runtime} as JSON to ``path``."""
    from worker import model_runtime

    scorer = model_runtime._scorer  # noqa: SLF001 - the loaded scorer, read without loading one
    heavy = sorted(name for name in sys.modules if name.split(".")[0] in HEAVY)
    report = {
        "pid": os.getpid(),
        "heavy_modules": heavy,
        "litert_loaded": "ai_edge_litert.interpreter" in sys.modules,
        "runtime": getattr(scorer, "runtime", None),
        "interpreter_sizes": getattr(scorer, "interpreter_sizes", None),
    }
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(report), encoding="utf-8")
    os.replace(tmp, path)  # the test waits for the file: it must appear whole
