"""Flower's settings for the work queue: ``celery -A proj flower`` reads this file from the current folder.

Flower runs this file (its ``--conf`` default is ``flowerconfig.py``) after reading its ``FLOWER_*``
environment variables and its command line; every top-level name that is a Flower option sets it,
and the command line still wins afterwards. So this file only fills in what was not given:

- ``address``: 127.0.0.1 unless ``--address`` / ``FLOWER_ADDRESS`` says otherwise (Flower's own
  default is every interface).
- ``basic_auth``: ``FLOWER_BASIC_AUTH=user:password[,user2:password2]``. Flower can revoke and
  kill tasks: without credentials it starts only on the loopback, and refuses anything else.
- ``broker_api``: RabbitMQ's management API, for the Broker page and ``/api/queues/length``
  (``task_queue``'s ready and unacknowledged counts): ``PROJ_MANAGEMENT_URL`` when set, otherwise
  derived from ``CELERY_BROKER_URL`` (same host, credentials and vhost, port 15672), the value
  ``proj queues`` reads too. ``--broker-api`` / ``FLOWER_BROKER_API`` still win. A ``;``-separated
  list (one URL per node of a cluster) is asked in order, the first node that answers wins, so the
  Broker page keeps showing ``task_queue`` while any node of the list runs.

Docs: https://flower.readthedocs.io/en/latest/config.html
"""

import ipaddress
import sys

from tornado.options import options

from proj.management import configured_management_url, management_urls

#: Exit status when Flower refuses to start (bad or missing credentials).
_EXIT_REFUSED = 2


def _refuse(message: str) -> None:
    print(f"flower: {message}", file=sys.stderr, flush=True)
    sys.exit(_EXIT_REFUSED)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _credentials(given) -> list[str]:
    """``user:password`` entries, or a refusal naming the malformed one (without its password)."""
    entries = [entry.strip() for entry in (given or []) if entry and entry.strip()]
    for entry in entries:
        user, sep, password = entry.partition(":")
        if not (user and sep and password):
            _refuse(
                f"FLOWER_BASIC_AUTH entry for {user or '(no user)'!r} is not user:password: "
                "set FLOWER_BASIC_AUTH=user:password (several: comma-separated)"
            )
    return entries


address = options.address or "127.0.0.1"

basic_auth = _credentials(options.basic_auth)
if not basic_auth and not (options.unix_socket or _is_loopback(address)):
    _refuse(
        f"refusing to listen on {address} without a password: set FLOWER_BASIC_AUTH=user:password, "
        "or listen on 127.0.0.1 (--address=127.0.0.1)"
    )

broker_api = options.broker_api or configured_management_url()
if not broker_api.startswith(("http://", "https://")):
    # Not echoed: a URL this malformed may not even show where its password is.
    _refuse(
        "the management API URL (PROJ_MANAGEMENT_URL or FLOWER_BROKER_API) is not http(s)://: "
        "set it like http://user:password@host:15672/api/"
    )


def _ask_the_first_node_that_answers() -> None:
    """Flower asks one management API for the Broker page; give it the failover a broker URL list has.

    Flower 2.2 has no setting for a list: its ``RabbitMQ.queues`` fetches ``broker_api`` and shows an
    empty page on any error. With a list, this replaces it with the same request tried on each node in
    turn (credentials from each URL), the first answer winning.
    """
    import json
    from urllib.parse import unquote, urljoin, urlparse

    from flower.utils import broker as flower_broker
    from tornado import httpclient

    one_node = flower_broker.RabbitMQ.queues

    async def queues(self, names):
        urls = management_urls(self.http_api or "")
        if len(urls) < 2:
            return await one_node(self, names)
        for url in urls:
            api = urlparse(url)
            client = httpclient.AsyncHTTPClient()
            try:
                response = await client.fetch(
                    urljoin(url if url.endswith("/") else url + "/", "queues/" + self.vhost),
                    auth_username=unquote(api.username or "") or self.username,
                    auth_password=unquote(api.password or "") or self.password,
                    connect_timeout=1.0,
                    request_timeout=2.0,
                    **self._tls_kwargs(),
                )
            except (OSError, httpclient.HTTPClientError) as exc:
                if isinstance(exc, httpclient.HTTPClientError) and exc.code != 599:
                    raise  # the node answered: its answer (401, say) is the error
                continue  # not reachable: the next node
            finally:
                client.close()
            return [queue for queue in json.loads(response.body.decode()) if queue["name"] in names]
        flower_broker.logger.error("no node of the management API list answered: %s", self.http_api)
        return []

    flower_broker.RabbitMQ.queues = queues


if ";" in broker_api:
    _ask_the_first_node_that_answers()
