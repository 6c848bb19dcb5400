# One image for web, worker, beat and migrations.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SKETCHWATCH_DATA_DIR=/var/lib/sketchwatch

WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service
COPY worker ./worker
COPY bench ./bench
COPY migrations ./migrations
RUN pip install . \
    && useradd --system --uid 10001 --home /var/lib/sketchwatch --create-home sketchwatch
USER sketchwatch
EXPOSE 8000
CMD ["sketchwatch", "serve", "--host", "0.0.0.0", "--port", "8000"]
