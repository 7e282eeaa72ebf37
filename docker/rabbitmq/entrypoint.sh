#!/bin/sh
# PID 1 of the local RabbitMQ image. Does what the official image does with the variables
# docker-compose.yml sets, then becomes RabbitMQ's own start script, run as the rabbitmq user.
# That script stops the node cleanly on SIGTERM (Debian's /usr/sbin/rabbitmq-server wrapper, as
# PID 1, ignores it). RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS is read by the start script itself.
set -eu

# rabbitmq.conf from the environment, written at every start (as the official image's
# RABBITMQ_DEFAULT_USER/PASS do: they take effect when the node starts on an empty volume).
{
    echo "loopback_users.guest = false"
    if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then echo "default_user = $RABBITMQ_DEFAULT_USER"; fi
    if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then echo "default_pass = $RABBITMQ_DEFAULT_PASS"; fi
} > /etc/rabbitmq/rabbitmq.conf

data=/var/lib/rabbitmq
chown rabbitmq:rabbitmq "$data"
if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
    cookie="$data/.erlang.cookie"
    rm -f "$cookie"
    (umask 077 && printf '%s' "$RABBITMQ_ERLANG_COOKIE" > "$cookie")
    chown rabbitmq:rabbitmq "$cookie"
fi

exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
