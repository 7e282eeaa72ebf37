# `make up`   the whole stack in the foreground (Procfile: private RabbitMQ, two workers, Flower on
#             http://127.0.0.1:5555); one Ctrl+C stops it all: the workers finish their running task
#             (warm shutdown), then the broker stops. Overrides go in .env (ENV_FILE=...).
#             proj/harness/stack.py runs the Procfile with honcho's parser and runner; only the stop differs
#             (`honcho start` kills a worker's pool process and the broker at once, and exits 130).
# `make demo` / `make test`: the same as ./dev.sh demo / ./dev.sh test.
PROJ_VENV ?= .venv
ENV_FILE ?= .env
export PROJ_VENV
export PATH := $(abspath $(PROJ_VENV))/bin:$(PATH)

.PHONY: up demo test

up: $(PROJ_VENV)/bin/honcho
	exec python -m proj.harness.stack --env "$(ENV_FILE)"

# First run: the virtualenv, the package and rabbitmq-server (./dev.sh setup).
$(PROJ_VENV)/bin/honcho:
	./dev.sh setup

demo:
	./dev.sh demo

test:
	./dev.sh test
