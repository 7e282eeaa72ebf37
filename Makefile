# `make up`   the whole stack in the foreground (Procfile: private RabbitMQ, two workers, Flower on
#             http://127.0.0.1:5555); one Ctrl+C stops it all. Overrides go in .env (ENV_FILE=...).
# `make demo` / `make test`: the same as ./dev.sh demo / ./dev.sh test.
PROJ_VENV ?= .venv
ENV_FILE ?= .env
export PROJ_VENV
export PATH := $(abspath $(PROJ_VENV))/bin:$(PATH)

.PHONY: up demo test

up: $(PROJ_VENV)/bin/honcho
	exec honcho start --env "$(ENV_FILE)"

# First run: the virtualenv, the package and rabbitmq-server (./dev.sh setup).
$(PROJ_VENV)/bin/honcho:
	./dev.sh setup

demo:
	./dev.sh demo

test:
	./dev.sh test
