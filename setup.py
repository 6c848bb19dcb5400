"""Builds the C stroke kernels (models/_kernels.c); everything else is declared in pyproject.toml."""

import sys

from setuptools import Extension, setup

# No fused multiply-add: the kernels must round each operation like the reference implementation
# (bit-identical bitmaps); GCC and Clang contract by default on targets with FMA (aarch64).
FLAGS = [] if sys.platform == "win32" else ["-O2", "-ffp-contract=off"]

setup(ext_modules=[Extension("models._kernels", ["models/_kernels.c"], extra_compile_args=FLAGS)])
