"""Benchmarks behind ``sketchwatch bench``."""
