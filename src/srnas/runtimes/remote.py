"""The client of a device agent (``srnas device serve``): measurements on another machine, over HTTP.

A latency target whose ``device`` is a URL (``http://HOST:PORT``) is measured by the agent listening there: the
agent runs this project's own measurement code on its machine (same timing protocols, threads pinned, warm-up, the
quiet guard) and returns the figure with its spread. This module only carries requests: JSON in, JSON out, the
token from the environment (:data:`TOKEN_ENV`), never a pickle. Which requests exist and what they carry is
:mod:`srnas.latency.wire`'s business; the server is :mod:`srnas.agent`.

A flaky link is retried, not fatal: a refused or lost connection, an agent restarting (connection reset, 502/503/504)
and an agent busy with another client's measurement are retried with exponential back-off (urllib3's ``Retry``,
:data:`RETRIES` attempts, :data:`BACKOFF_S` doubling), then fail with one line naming the agent and what happened.
A measurement the agent refused because its spread was above the agent's limit is asked again up to
:data:`SPREAD_RETRIES` times (the device may settle), then fails saying so.

Only this module imports ``requests`` / ``urllib3`` (an import-linter contract).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from srnas.errors import SrnasError

__all__ = ["BACKOFF_S", "PROTOCOL_VERSION", "RETRIES", "SPREAD_RETRIES", "TOKEN_ENV", "AgentClient", "DeviceError",
           "agent_client", "is_device_url"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
TOKEN_ENV = "SRNAS_DEVICE_TOKEN"
RETRIES = 8  # connection errors, lost replies, 502/503/504: back-off 0.5, 1, 2, ... 30 s (about 1.5 min in all)
BACKOFF_S = 0.5
BACKOFF_MAX_S = 30.0
SPREAD_RETRIES = 3
SPREAD_STATUS = 409  # the agent measured, but the spread was above its limit: no figure
TIMEOUT_S = (10.0, 1800.0)  # connect, read (a whole-network paired measurement can take minutes)


class DeviceError(SrnasError):
    """A device agent could not be reached, refused a request, or could not measure; the message names the agent."""


def is_device_url(device: str) -> bool:
    """Whether a target's ``device`` names an agent (``http://`` or ``https://`` URL) rather than this machine."""
    return device.startswith(("http://", "https://"))


@dataclass(frozen=True)
class AgentReply:
    """A measurement's figure and how steady it was (coefficient of variation of its samples)."""

    value: Any
    spread: float
    samples: int


class AgentClient:
    """Requests to one agent: ``url`` (``http://HOST:PORT``), ``token`` (sent as a bearer token)."""

    def __init__(self, url: str, token: str, *, retries: int | None = None, backoff_s: float | None = None) -> None:
        retries = RETRIES if retries is None else retries
        backoff_s = BACKOFF_S if backoff_s is None else backoff_s
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise DeviceError(f"device {url!r}: expected http://HOST:PORT (or https://)")
        self.url = url.rstrip("/")
        self.session = requests.Session()
        retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=retries,
                      backoff_factor=backoff_s, backoff_max=BACKOFF_MAX_S, status_forcelist=(502, 503, 504),
                      allowed_methods=None, respect_retry_after_header=True, raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        self.session.headers["Authorization"] = f"Bearer {token}"
        self._info: dict[str, Any] | None = None

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        try:
            return self.session.request(method, f"{self.url}{path}", json=body, timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            reason = exc.args[0] if exc.args else exc
            raise DeviceError(f"device {self.url}: unreachable after retries ({type(exc).__name__}: {reason})") from None

    def _json(self, response: requests.Response, what: str) -> dict[str, Any]:
        if response.status_code != 200:
            raise DeviceError(f"device {self.url}: {what} refused ({response.status_code}): {_detail(response)}")
        try:
            reply = response.json()
        except ValueError:
            raise DeviceError(f"device {self.url}: {what}: the reply is not JSON") from None
        if not isinstance(reply, dict):
            raise DeviceError(f"device {self.url}: {what}: expected a JSON object, got {type(reply).__name__}")
        return reply

    def info(self, fresh: bool = False) -> dict[str, Any]:
        """The agent's machine: srnas version, protocol, fingerprint, runtimes and precisions (asked once unless
        ``fresh``)."""
        if self._info is None or fresh:
            info = self._json(self._request("GET", "/v1/info"), "info")
            if info.get("protocol") != PROTOCOL_VERSION:
                raise DeviceError(f"device {self.url}: speaks protocol {info.get('protocol')!r}, this srnas "
                                  f"{PROTOCOL_VERSION} (install the same srnas version on both)")
            self._info = info
        return self._info

    def call(self, kind: str, request: dict[str, Any]) -> AgentReply:
        """One request of ``kind`` (``/v1/<kind>``); a reply refused for its spread is asked again
        :data:`SPREAD_RETRIES` times."""
        for attempt in range(SPREAD_RETRIES + 1):
            response = self._request("POST", f"/v1/{kind}", request)
            if response.status_code != SPREAD_STATUS:
                reply = self._json(response, kind)
                return AgentReply(reply.get("value"), float(reply.get("spread", 0.0)), int(reply.get("samples", 0)))
            log.warning("device %s: %s (attempt %d of %d)", self.url, _detail(response), attempt + 1, SPREAD_RETRIES + 1)
            time.sleep(BACKOFF_S * 2**attempt)
        raise DeviceError(f"device {self.url}: {kind}: {_detail(response)}; asked {SPREAD_RETRIES + 1} times")


def _detail(response: requests.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return str(detail or response.reason or response.text[:200])


@functools.cache
def agent_client(url: str) -> AgentClient:
    """The client of the agent at ``url`` (one per process), its token from ``$SRNAS_DEVICE_TOKEN``."""
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise DeviceError(f"device {url}: set {TOKEN_ENV} to the agent's token (srnas device serve prints how)")
    return AgentClient(url, token)
