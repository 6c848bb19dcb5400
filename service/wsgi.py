"""WSGI entry point for gunicorn (``gunicorn service.wsgi:app``); settings come from SKETCHWATCH_* variables."""

from service import create_app

app = create_app()
