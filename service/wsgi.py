"""WSGI entry point for the web server (``sketchwatch serve`` runs granian on ``service.wsgi:app``); settings come from SKETCHWATCH_* variables."""

import gc

from service.app import create_app

app = create_app()
# ~200k objects from imports live as long as the process: a full collection that walks them paused every
# request thread for 20-200 ms (the intake's tail latency). Frozen, collections only walk what requests make.
gc.freeze()
