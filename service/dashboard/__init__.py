"""The dashboard blueprint."""

from flask import Blueprint

bp = Blueprint("dashboard", __name__)
