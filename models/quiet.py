"""Keep TensorFlow's and LiteRT's start-up notices off the terminal and out of the logs.

TensorFlow writes its oneDNN and absl notices straight to file descriptor 2 while it is imported,
before its log-level variable applies, and LiteRT announces its CPU delegate the same way. The
commands that load TensorFlow call :func:`quiet_tensorflow` first (unless ``--verbose``); code that
creates LiteRT interpreters wraps that in :func:`filtered_stderr`. Importing this module imports
neither library.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Informational and warning lines in the absl/glog format ("I0000 00:00:..."), absl's note that it
# is not initialised yet, and LiteRT's plain "INFO: ..." lines. Errors ("E...", "F...") always pass.
NOTICE = re.compile(r"^(?:[IW]\d{4} |WARNING: All log messages before absl::InitializeLog|INFO: )")


def _to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


@contextmanager
def filtered_stderr(emit: Callable[[str], None] = _to_stderr, drop: re.Pattern = NOTICE) -> Iterator[None]:
    """Capture what is written on file descriptor 2 in the block, then ``emit`` each line ``drop`` does not match.

    Native libraries write there directly, past Python's ``sys.stderr`` and logging; nothing else is
    lost, only delayed until the block ends.
    """
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip() and not drop.match(line):
                    emit(line)


def quiet_tensorflow(verbose: bool = False) -> None:
    """Load TensorFlow now with its start-up notices filtered (nothing is done when ``verbose``).

    Also silences its C++ logging and the ``absl`` Python logger for the rest of the process. That
    includes TF's ERROR level: it carries notices such as "oneDNN supports DT_INT32 only on platforms
    with AVX-512" during training, while real failures reach Python as exceptions.
    """
    if verbose:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    logging.getLogger("absl").setLevel(logging.ERROR)
    with filtered_stderr():
        from models.tf_runtime import configure_tensorflow

        configure_tensorflow()
