"""Imports every API route module so they register on the blueprint."""

from service.api import models, openapi, reviews, sketches, stats, timeseries  # noqa: F401
