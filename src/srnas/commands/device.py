"""``srnas device``: the device agent (``serve``, on the machine a model will run on) and a look at one (``info``)."""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from srnas.commands.common import print_json
from srnas.errors import ConfigError

DEFAULT_PORT = 8765


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "device",
        help="device agent: measure latency on the machine a model will run on",
        description="A latency target whose device is http://HOST:PORT is measured by the agent listening there: "
        "run `srnas device serve` on that machine (same srnas version), give the pipeline the same token in "
        "$SRNAS_DEVICE_TOKEN, and profile_device, validation, the searches' measurements and check_budget run there.",
    )
    commands = parser.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the agent on this machine",
        description="Serve latency measurements over HTTP with this project's timing protocols. Needs a token in "
        "the environment variable named by --token-env (generated and written to WORKDIR/token, mode 0600, when "
        "unset). Measures one request at a time; writes only inside --workdir. Pin it to cores with taskset to keep "
        "it off a busy neighbour, e.g. `taskset -c 1 srnas device serve`.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="default: %(default)s")
    serve.add_argument("--workdir", type=Path, default=Path("srnas-agent"), help="working folder (default: %(default)s)")
    serve.add_argument("--token-env", default="SRNAS_DEVICE_TOKEN", help="environment variable with the token "
                       "(default: %(default)s)")
    serve.add_argument("--max-spread", type=float, default=0.25, help="largest spread of a figure's samples the agent "
                       "reports (robust coefficient of variation, over 3 samples or more); above it the request is "
                       "refused (default: %(default)s)")
    serve.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body (default: %(default)s)")
    serve.add_argument("--wait-s", type=float, default=600.0, help="how long a request waits while another measurement "
                       "runs before it is refused as busy (default: %(default)s)")
    serve.add_argument("--log", type=Path, help="also write the log here")
    serve.set_defaults(handler=run_serve)
    info = commands.add_parser("info", help="what an agent reports: versions, fingerprint, runtimes, limits",
                               description="Ask the agent at URL (token from $SRNAS_DEVICE_TOKEN) what it is.")
    info.add_argument("url", help="http://HOST:PORT")
    info.set_defaults(handler=run_info)


def _token(env: str, workdir: Path) -> str:
    token = os.environ.get(env, "")
    if token:
        return token
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "token"
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    print(f"${env} is not set: generated a token in {path} (give it to the pipeline as $SRNAS_DEVICE_TOKEN)")
    return token


def run_serve(args: argparse.Namespace) -> int:
    from srnas.agent.handlers import AgentConfig
    from srnas.agent.server import serve

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: expected 1-65535, got {args.port}")
    workdir = args.workdir.resolve()
    cfg = AgentConfig(workdir, max_spread=args.max_spread, max_request_bytes=int(args.max_request_mb * 2**20),
                      wait_s=args.wait_s)
    serve(cfg, _token(args.token_env, workdir), args.host, args.port)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from srnas.runtimes.remote import agent_client

    print_json(agent_client(args.url).info())
    return 0
