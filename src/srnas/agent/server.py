"""The device agent's HTTP server (``srnas device serve``): FastAPI under uvicorn, the only module that imports them.

- Every request needs the token (``Authorization: Bearer <token>``, compared in constant time): 401 otherwise.
- A request body larger than :attr:`AgentConfig.max_request_bytes` is refused (413) before it is read in full.
- One measurement at a time: a request that arrives while another runs waits up to :attr:`AgentConfig.wait_s` for
  it, then is refused with 503 and ``Retry-After`` (the client backs off and asks again).
- Everything the agent writes stays in its working folder: it runs there, and temporary files (exported networks,
  ONNX Runtime profiles) go to its ``tmp/``; the auto runtime choice to its ``cache/``.

``GET /v1/info`` also says whether a measurement is running now (``busy``).

Replies: 200 ``{"value", "spread", "cv", "samples"}``; 400 a request that does not fit, with one line saying what; 409 a
figure too unsteady to report (:class:`srnas.agent.handlers.SpreadTooHigh`); 404 an unknown request.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import tempfile
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from srnas.agent.handlers import KINDS, AgentConfig, SpreadTooHigh, agent_info, handle
from srnas.errors import SrnasError
from srnas.runtimes.remote import SPREAD_STATUS

__all__ = ["create_app", "prepare_workdir", "serve"]

log = logging.getLogger(__name__)

BUSY_RETRY_AFTER_S = 5


def prepare_workdir(cfg: AgentConfig) -> None:
    """Make the working folder, run inside it and keep temporary files in its ``tmp/`` (nothing lands outside)."""
    tmp = cfg.workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(cfg.workdir)
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = str(tmp)


def create_app(cfg: AgentConfig, token: str) -> FastAPI:
    """The agent's application: ``GET /v1/info`` and ``POST /v1/<kind>`` for each of :data:`KINDS`."""
    if not token:
        raise SrnasError("device agent: an empty token would let anyone in")
    app = FastAPI(title="srnas device agent", docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {token}".encode()
    one_at_a_time = threading.Lock()

    def authorise(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong token (Authorization: Bearer <token>)")

    async def read_body(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cfg.max_request_bytes:
            raise HTTPException(413, f"request of {int(declared)} bytes is larger than this agent's limit of "
                                     f"{cfg.max_request_bytes} bytes (--max-request-mb)")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > cfg.max_request_bytes:
                raise HTTPException(413, f"request larger than this agent's limit of {cfg.max_request_bytes} bytes "
                                         "(--max-request-mb)")
        try:
            data = json.loads(body)
        except ValueError:
            raise HTTPException(400, "request body is not JSON") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "request body must be a JSON object")
        return data

    def measure_alone(kind: str, data: dict[str, Any]) -> dict[str, Any]:
        if not one_at_a_time.acquire(timeout=cfg.wait_s):
            raise HTTPException(503, f"busy: another measurement has been running for over {cfg.wait_s:.0f} s (--wait-s)",
                                headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
        try:
            reply = handle(kind, data, cfg)
        except SpreadTooHigh as exc:
            raise HTTPException(SPREAD_STATUS, str(exc)) from None
        except SrnasError as exc:
            raise HTTPException(400, str(exc)) from None
        finally:
            one_at_a_time.release()
        log.info("%s: %s (spread %.1f%%, %d samples)", kind, reply["value"] if kind != "fingerprint" else "...",
                 100 * reply["spread"], reply["samples"])
        return reply

    @app.get("/v1/info")
    async def info(request: Request) -> dict[str, Any]:
        authorise(request)
        return agent_info(cfg) | {"busy": one_at_a_time.locked()}

    @app.post("/v1/{kind}")
    async def measure(kind: str, request: Request) -> dict[str, Any]:
        authorise(request)
        if kind not in KINDS:
            raise HTTPException(404, f"unknown request {kind!r}; known: {', '.join(KINDS)}")
        data = await read_body(request)
        return await run_in_threadpool(measure_alone, kind, data)

    return app


def serve(cfg: AgentConfig, token: str, host: str, port: int) -> None:
    """Serve until interrupted (uvicorn), from inside the working folder."""
    prepare_workdir(cfg)
    app = create_app(cfg, token)
    log.info("srnas device agent on http://%s:%d, working folder %s; one measurement at a time", host, port, cfg.workdir)
    # log_config None: uvicorn's dictConfig would close the handlers of srnas's log (--log file included)
    uvicorn.run(app, host=host, port=port, log_config=None, log_level="warning", access_log=False)
