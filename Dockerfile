# The work-queue app: one image for the workers and Flower (docker-compose.yml picks the command).
#
#   docker build -t proj .
#   docker run --rm -e CELERY_BROKER_URL=amqp://USER:PASSWORD@HOST:5672// proj
#
# BASE is Python 3.11 with pip first on PATH. Keep the default; ./dev.sh images builds this file on a
# local image (--build-arg BASE=proj-local/python:local) where no registry is reachable.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A worker runs tasks it is handed: never as root.
RUN useradd --create-home --uid 10001 --user-group proj

WORKDIR /src
# Only what the wheel needs (pyproject names README.md as the readme), so editing tests or
# compose files does not rebuild this layer.
COPY pyproject.toml README.md ./
COPY proj ./proj
# A CA bundle given as the build secret `ca-bundle` (docker build --secret id=ca-bundle,src=FILE) is
# what pip trusts, for networks that intercept TLS. A secret is mounted for this RUN only: it is in
# no layer of the image. Without it pip uses its own bundle.
# `pip install .`: the app only (celery, kombu, flower); not the tooling extra (proj[tools]: pika, matplotlib,
# honcho, pyyaml). `proj health`, the healthcheck, needs nothing more.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && pip install .

USER proj
WORKDIR /home/proj
# `celery -A proj flower` reads its settings from flowerconfig.py in the current folder:
# the loopback unless FLOWER_BASIC_AUTH is set, and the broker's management API.
COPY flowerconfig.py ./

# One tutorial worker; SIGTERM (docker stop) is Celery's warm shutdown: finish the task, ack, exit.
STOPSIGNAL SIGTERM
CMD ["celery", "-A", "proj", "worker", "-n", "worker@%h", "-l", "INFO"]
