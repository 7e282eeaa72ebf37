"""RabbitMQ's management HTTP API: what the broker itself says about queues, channels and consumers.

This is the tutorial's ``rabbitmqctl list_queues name messages_ready messages_unacknowledged``
over HTTP. The API's base URL is the form Flower's ``broker_api`` takes
(``http://guest:guest@127.0.0.1:15672/api/``): ``PROJ_MANAGEMENT_URL`` when set, otherwise
derived from ``CELERY_BROKER_URL`` (same host, credentials and vhost, port 15672).
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request

from proj import config
from proj.celery import app

DEFAULT_MANAGEMENT_PORT = 15672


class ManagementError(RuntimeError):
    """The management API could not be reached or refused the request."""


def management_url_from_broker(broker_url: str) -> str:
    """``amqp://u:p@host:5672/vhost`` -> ``http://u:p@host:15672/api/``."""
    parts = urllib.parse.urlsplit(broker_url)
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    host = parts.hostname or "localhost"
    creds = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return f"http://{creds}@{host}:{DEFAULT_MANAGEMENT_PORT}/api/"


def vhost_from_broker(broker_url: str) -> str:
    path = urllib.parse.urlsplit(broker_url).path
    vhost = urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"
    return vhost or "/"


def configured_management_url(broker_url: str | None = None) -> str:
    """``PROJ_MANAGEMENT_URL``, else derived from the broker URL: one management URL per host of
    Celery's failover list, ``;``-separated like it (a client uses the first that answers)."""
    if config.MANAGEMENT_URL:
        return config.MANAGEMENT_URL
    if broker_url is None:
        broker_url = app.conf.broker_url
    derived = [management_url_from_broker(one.strip()) for one in broker_url.split(";") if one.strip()]
    return ";".join(dict.fromkeys(derived))


def management_urls(url: str) -> list[str]:
    """The URLs of a ``;``-separated management URL list (one URL is a list of one)."""
    return [one.strip() for one in url.split(";") if one.strip()]


def hide_password(url: str) -> str:
    """The URL with its password replaced by ``***``, for messages people see."""
    if ";" in url:  # Celery's failover list: every URL in it
        return ";".join(hide_password(one) for one in url.split(";"))
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed port: fall back to the pattern below
        password = None
    if password is None:
        # Not a URL urllib understands (no scheme, say): mask anything shaped like user:password@.
        return re.sub(r"(^|//)([^:/@]+):[^@]*@", r"\1\2:***@", url)
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))


class _Endpoint:
    """One node's management API: its base URL and credentials."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        self.user = urllib.parse.unquote(parts.username or "guest")
        self.password = urllib.parse.unquote(parts.password or "guest")
        port = f":{parts.port}" if parts.port else ""
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        self.base = f"{parts.scheme}://{parts.hostname}{port}{path}"


class _Unreachable(Exception):
    """This node's API did not answer: try the next one."""


class Management:
    """A small client for the handful of management endpoints this project reads.

    ``url`` may be a ``;``-separated list, one per node of a cluster, like Celery's failover list of
    broker URLs: a request goes to the first node that answers (and that node is asked first next
    time), so the client keeps working while any node of the list runs. A node that answers with an
    HTTP error (401, 500...) is not skipped: that answer is the error.
    """

    def __init__(self, url: str, vhost: str = "/", timeout: float = 5.0):
        self.endpoints = [_Endpoint(one) for one in management_urls(url)] or [_Endpoint(url)]
        self.vhost = vhost
        self.timeout = timeout

    @property
    def base(self) -> str:
        """The base URL of the node asked first (the last one that answered)."""
        return self.endpoints[0].base

    @classmethod
    def for_broker(cls, broker_url: str | None = None) -> Management:
        if broker_url is None:
            broker_url = app.conf.broker_url
        return cls(configured_management_url(broker_url), vhost_from_broker(broker_url.split(";")[0]))

    def __repr__(self) -> str:
        return f"Management({';'.join(e.base for e in self.endpoints)!r}, vhost={self.vhost!r})"

    def request(self, method: str, path: str, body: object | None = None) -> object:
        unreachable = []
        for endpoint in list(self.endpoints):
            try:
                answer = self._request(endpoint, method, path, body)
            except _Unreachable as exc:
                unreachable.append(f"{endpoint.base}: {exc}")
                continue
            if endpoint is not self.endpoints[0]:
                self.endpoints.remove(endpoint)
                self.endpoints.insert(0, endpoint)
            return answer
        raise ManagementError(f"cannot reach the management API at {'; '.join(unreachable)}")

    def _request(self, endpoint: _Endpoint, method: str, path: str, body: object | None) -> object:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(endpoint.base + path, data=data, method=method)
        token = base64.b64encode(f"{endpoint.user}:{endpoint.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET":
                return None
            raise ManagementError(f"{method} {endpoint.base}{path}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise _Unreachable(getattr(exc, "reason", exc)) from exc
        return json.loads(payload) if payload else None

    def _vh(self) -> str:
        return urllib.parse.quote(self.vhost, safe="")

    def queue(self, name: str) -> dict | None:
        return self.request("GET", f"queues/{self._vh()}/{urllib.parse.quote(name, safe='')}")

    def queues(self) -> list[dict]:
        return self.request("GET", f"queues/{self._vh()}") or []

    def channels(self) -> list[dict]:
        return [c for c in self.request("GET", "channels") or [] if c.get("vhost") == self.vhost]

    def consumers(self) -> list[dict]:
        return self.request("GET", f"consumers/{self._vh()}") or []

    def delete_queue(self, name: str) -> None:
        """Delete a queue of the vhost; one that does not exist is not an error."""
        self._delete("queues", name)

    def put_policy(self, name: str, body: dict) -> None:
        self.request("PUT", f"policies/{self._vh()}/{urllib.parse.quote(name, safe='')}", body)

    def delete_policy(self, name: str) -> None:
        """Delete a policy of the vhost; one that does not exist is not an error."""
        self._delete("policies", name)

    def _delete(self, kind: str, name: str) -> None:
        try:
            self.request("DELETE", f"{kind}/{self._vh()}/{urllib.parse.quote(name, safe='')}")
        except ManagementError as exc:
            if "HTTP 404" not in str(exc):
                raise

    def counts(self, name: str) -> tuple[int, int] | None:
        """(messages_ready, messages_unacknowledged) of a queue, or None if it does not exist."""
        q = self.queue(name)
        if q is None:
            return None
        return int(q.get("messages_ready", 0) or 0), int(q.get("messages_unacknowledged", 0) or 0)
