# One image for every Graft process (api, worker, migrate); compose picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRAFT_DATA_DIR=/data \
    GRAFT_MODEL_CACHE=/data/model-cache

WORKDIR /srv/graft

# Dependencies first, so a code change does not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir -p graft app worker migrations \
    && touch graft/__init__.py app/__init__.py worker/__init__.py migrations/__init__.py \
    && pip install '.[worker]' \
    && pip uninstall -y graft

COPY graft ./graft
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 graft \
    && mkdir -p /data && chown graft:graft /data

USER graft
VOLUME ["/data"]
EXPOSE 8000
CMD ["graft", "api", "--host", "0.0.0.0", "--port", "8000"]
