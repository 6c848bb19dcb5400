"""SketchWatch: the web app (``service.app.create_app``), the CLI (``service.cli``) and the shared core (``service.core``)."""
