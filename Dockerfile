# One image for web, worker, beat and migrations.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SKETCHWATCH_DATA_DIR=/var/lib/sketchwatch

# The sources are built in /tmp/src and removed: the stroke kernels (models/_kernels.c) are compiled into
# the installed package only, and a source tree in the working directory would shadow it (Celery puts the
# working directory on sys.path). The compiler is removed in the same layer, so it adds nothing to the image.
WORKDIR /tmp/src
COPY pyproject.toml setup.py README.md ./
COPY models ./models
COPY service ./service
COPY worker ./worker
COPY bench ./bench
COPY migrations ./migrations
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install . \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* /tmp/src \
    && useradd --system --uid 10001 --home /var/lib/sketchwatch --create-home sketchwatch
WORKDIR /app
USER sketchwatch
EXPOSE 8000
CMD ["sketchwatch", "serve", "--host", "0.0.0.0", "--port", "8000"]
