"""MLflow tracking: one parent run per pipeline run, a child run per stage, nested runs per candidate.

This is the only module that imports mlflow, and it does so lazily (importing mlflow costs about
2 s of CPU), so ``import srnas.tracking`` is cheap and a disabled configuration never loads it.

Stages are separate processes (Snakemake jobs, ``dvc repro`` stages), so the parent run is found
through a small state file, :data:`STATE_FILE` (relative to the working directory), keyed by
tracking URI (its password masked) and experiment. Processes on other hosts share it through the project folder
(SLURM jobs of a shared project folder; its ``flock`` serialises them); processes with no folder in common are given
the parent's id in ``SRNAS_PIPELINE_RUN_ID`` instead:

- :func:`start_pipeline` creates the parent run and records it; :func:`end_pipeline` terminates
  it and forgets it (Snakemake's onstart / onsuccess / onerror hooks, DVC's ``report`` stage).
- :func:`stage_run` joins the recorded parent, or creates and records one when there is none (a
  lone ``dvc repro`` stage), so later stages join it. ``SRNAS_PIPELINE_RUN_ID`` overrides the file.
- A stage that raises ends FAILED, marks the parent FAILED and forgets it.
- A stage run records the process that runs it (:data:`PROCESS_TAG`). A killed process (SIGKILL, power loss) cannot
  end its run, so when a stage starts it ends KILLED every run of the same stage (same ``srnas.stage``,
  ``srnas.model`` and ``srnas.scale``, same experiment) still RUNNING whose process is gone -- it ran on this host
  and no longer runs, or it predates the tag -- with that run's RUNNING candidates. A run of another host is left
  alone (its process cannot be checked from here).

Where runs go: ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME``, when set, take precedence over
``tracking.uri`` and ``tracking.experiment`` (:func:`effective`), as they do for every MLflow tool. With a server
(``http(s)://``, ``databricks``), a new experiment's artifacts go where the server says: ``tracking.artifact_location``
is used for local stores only, unless it is itself a URI (``s3://...``); an ``mlflow server --serve-artifacts`` gives
``mlflow-artifacts:/<experiment id>``, so clients upload through it and need no access to its storage. The tracking
settings never invalidate a stage (Snakemake passes them outside each rule's params, DVC lists them in no stage's
params).

A server that does not answer fails the stage, never silently drops its record (the report registers the final model
from the export stage's logged model, ``srnas compare`` reads the runs): the first request of a stage (before any work)
is retried briefly (:data:`PROBE_RETRIES`: a few seconds), every later one for about 30 s (:data:`HTTP_RETRIES`, a
server restart), where MLflow's own defaults would wait minutes; then :class:`TrackingUnreachable`, one line naming
the URI, and the interrupted run is left RUNNING (asking the server to end it would only wait again). A password in
the URI (``http://user:password@host``, HTTP basic auth) shows as ``***`` in every message, log line and the state
file; MLflow's own printing of each run's page to stdout is turned off (each stage logs its run's page instead).

Metric keys follow one scheme (:func:`metric_key`, docs/tracking.md): ``<quantity>_<subject>`` -- ``psnr_val``
(PSNR on the validation set while training), ``psnr_proxy`` (a search's proxy PSNR), ``psnr_<set>_x<scale>`` and
``ssim_<set>_x<scale>`` (the evaluation). The stages' own files keep their keys; the renaming happens here.

Only :class:`mlflow.MlflowClient` is used (never the fluent ``mlflow.start_run``), so no active
run is left behind in any process. Logging a model (:meth:`StageRun.log_models`) names its run explicitly. With ``TrackingConfig.enabled = False`` every function is a
cheap no-op with the same API, so library code never branches on tracking.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from srnas.atomic import write_json
from srnas.config import TrackingConfig, redact_url
from srnas.digests import file_sha256
from srnas.errors import SrnasError

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "METRIC_ALIASES",
    "PIPELINE_RUN_ENV",
    "STATE_FILE",
    "StageRun",
    "TrackingError",
    "TrackingUnreachable",
    "current_pipeline",
    "effective",
    "end_pipeline",
    "flatten_params",
    "metric_key",
    "query_runs",
    "registered_model_name",
    "stage_run",
    "start_pipeline",
]

_log = logging.getLogger(__name__)

STATE_FILE = Path(".srnas/pipeline_run.json")
LOCK_FILE = Path(".srnas/tracking.lock")
PIPELINE_RUN_ENV = "SRNAS_PIPELINE_RUN_ID"

PARENT_TAG = "mlflow.parentRunId"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
KIND_TAG = "srnas.kind"  # "pipeline" | "stage" | "candidate"
STAGE_TAG = "srnas.stage"
PIPELINE_TAG = "srnas.pipeline"
CANDIDATE_TAG = "srnas.candidate"
PROCESS_TAG = "srnas.process"  # "<host> <pid> <start>": the process running a stage run (stale runs are told by it)
IDENTITY_TAGS = ("srnas.model", "srnas.scale")  # with STAGE_TAG: which runs are the same stage

# mlflow.utils.validation limits (a test checks they still match).
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000

END_STATUSES = ("FINISHED", "FAILED", "KILLED")

URI_ENV, EXPERIMENT_ENV = "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"
SERVER_SCHEMES = ("http://", "https://", "databricks")
HTTP_SCHEMES = ("http://", "https://")

# How long a stage waits for an MLflow server that does not answer. MLflow's HTTP client retries a failed request (no
# connection, a timeout, HTTP 429/5xx) with exponential back-off; its defaults (7 retries, 120 s per attempt) keep a
# stage waiting about 4 minutes when the server is down and over 16 when it accepts connections and never answers.
# srnas sets these instead, each only where the environment does not set it (a value set there wins):
# - HTTP_RETRIES, for every request: 5 attempts 0, 4, 8 and 16 s apart (+ up to 1 s of jitter each), so a server
#   restart is ridden out and a lost server fails the stage after ~30 s (~2 min if no attempt gets an answer in 20 s);
# - PROBE_RETRIES, for a stage's first request (before it does any work): 3 attempts, 0 and 2 s apart, 10 s each, so
#   a stage pointed at a server that is not there fails in seconds (~30 s if nothing answers at all).
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
PROBE_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow prints each ended run's page (the server's URL, a password in it included) to stdout: srnas logs it instead.
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
MODEL_DIGEST_TAG = "srnas.sha256"  # a logged model's tag: the SHA-256 of the exported ONNX file it was logged with
FLAVOR_TAG = "srnas.flavor"  # "pytorch" | "onnx"

# One metric naming scheme (docs/tracking.md): the stages' historical keys and their MLflow names.
METRIC_ALIASES = {
    "val_psnr": "psnr_val",
    "val_psnr_largest": "psnr_val_largest",
    "val_psnr_smallest": "psnr_val_smallest",
    "best_psnr": "psnr_proxy",
    "proxy_psnr": "psnr_proxy",
    "psnr": "psnr_proxy",
}


class TrackingError(SrnasError):
    """The tracking store or the recorded pipeline run cannot be used. The message names it."""


class TrackingUnreachable(TrackingError):
    """The MLflow server did not answer (after the bounded retries of :data:`HTTP_RETRIES`). The run it interrupted is
    left RUNNING: recording its failure would only wait on the server again."""


# --------------------------------------------------------------------------------------------
# Plain helpers (no mlflow)


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        try:
            text = json.dumps(list(value), default=str)
        except (TypeError, ValueError):
            text = str(list(value))
    elif isinstance(value, os.PathLike):
        text = os.fspath(value)
    else:
        text = str(value)
    return text[:MAX_PARAM_VAL_LENGTH]


def flatten_params(params: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings (and dataclasses) become dotted keys; lists become JSON; values are truncated."""
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = dataclasses.asdict(params)
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, Mapping):
            flat[name] = "{}"
        else:
            flat[name] = _param_value(value)
    return flat


def _tag_values(tags: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(key): str(value)[:MAX_TAG_VAL_LENGTH] for key, value in (tags or {}).items() if value is not None}


def _metric_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    values: dict[str, float] = {}
    for key, value in metrics.items():
        if value is None:
            continue
        try:
            values[str(key)] = float(value)  # numpy scalars, 0-d arrays, tensors
        except (TypeError, ValueError):
            raise TypeError(f"metric {key!r}: {value!r} is not a number") from None
    return values


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@functools.lru_cache(maxsize=8)
def _git_commit(cwd: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def _base_tags(kind: str) -> dict[str, str]:
    tags = {KIND_TAG: kind}
    commit = _git_commit(os.getcwd())
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    return tags


def _resolve_uri(uri: str) -> str:
    """A relative ``sqlite:///file.db`` becomes absolute, so every process and cwd change agree on it."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path, sep, query = uri[len(prefix) :].partition("?")
    if not path or path == ":memory:" or os.path.isabs(path):
        return uri
    return f"{prefix}{os.path.abspath(path)}{sep}{query}"


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix) :].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # a scheme of two characters at least (C: is a drive)


def _artifact_uri(uri: str, location: str) -> str | None:
    """The artifact location a new experiment gets: none for a server (it decides: ``mlflow-artifacts:/<id>`` when it
    serves artifacts, uploaded through it) unless ``location`` is a URI (``s3://...``, ``mlflow-artifacts:/...``)."""
    if not location:
        return None
    if _URI_SCHEME.match(location):
        return location
    if uri.startswith(SERVER_SCHEMES):
        return None
    return Path(location).expanduser().resolve().as_uri()


def _uri_source() -> str:
    """Where the tracking URI came from, for messages: the environment variable when it is set, else the key."""
    return URI_ENV if os.environ.get(URI_ENV, "").strip() else "tracking.uri"


def _scrub(text: str, uri: str) -> str:
    """``text`` on one line with the password of ``uri`` (``http://user:password@host``) masked wherever it shows."""
    from urllib.parse import quote, unquote, urlsplit

    try:
        password = urlsplit(uri).password
    except ValueError:
        password = None
    if password:
        for form in {password, unquote(password), quote(unquote(password), safe="")}:
            text = text.replace(form, "***")
    return " ".join(redact_url(text).split())


def _transport_failure(exc: BaseException) -> BaseException | None:
    """The connection-level failure under ``exc`` (MLflow wraps its HTTP client's: requests / urllib3 exceptions,
    socket errors), or None when ``exc`` is no such failure (a refused request, a bug, a local file)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if type(link).__module__.partition(".")[0] in ("requests", "urllib3") or isinstance(link, (ConnectionError, TimeoutError)):
            return link
        link = link.__cause__ or link.__context__
    return None


def _failure_reason(failure: BaseException) -> str:
    """A few words for a transport failure: ``Connection refused``, ``no answer within 20 s``, ``HTTP 503``, ..."""
    text = str(failure)
    errno = re.findall(r"\[Errno -?\d+\] ([^'\"()\[\]]+)", text)
    if errno:
        return errno[-1].strip().rstrip(".")
    status = re.search(r"too many (\d{3}) error responses", text)
    if status:
        return f"HTTP {status.group(1)}"
    if "timed out" in text.lower() or "timeout" in type(failure).__name__.lower():
        timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "").strip()
        return f"no answer within {timeout} s" if timeout else "no answer"
    return text[:200]


@contextlib.contextmanager
def _answering(uri: str) -> Iterator[None]:
    """The block's requests to the server at ``uri``: a transport failure (after MLflow's retries) becomes one
    :class:`TrackingUnreachable` line naming the URI, its password masked; any other error passes unchanged."""
    start = time.monotonic()
    try:
        yield
    except TrackingError:
        raise
    except Exception as exc:
        failure = _transport_failure(exc) if uri.startswith(HTTP_SCHEMES) else None
        if failure is None:
            raise
        waited = time.monotonic() - start
        reason = _scrub(_failure_reason(failure), uri)
        raise TrackingUnreachable(
            f"{_uri_source()} {redact_url(uri)}: the MLflow server does not answer ({reason}; gave up after {waited:.0f} s); "
            f"start it or point {_uri_source()} at a running one, or set tracking.enabled: false"
        ) from None  # MLflow's message holds the URL, password included: no traceback shows it


def effective(cfg: TrackingConfig) -> TrackingConfig:
    """``cfg`` with ``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_NAME`` (when set and not empty) over its ``uri`` /
    ``experiment``: the environment wins, as for every MLflow tool."""
    uri = os.environ.get(URI_ENV, "").strip() or cfg.uri
    experiment = os.environ.get(EXPERIMENT_ENV, "").strip() or cfg.experiment
    if (uri, experiment) == (cfg.uri, cfg.experiment):
        return cfg
    return dataclasses.replace(cfg, uri=uri, experiment=experiment)


def metric_key(key: str) -> str:
    """The MLflow name of a stage's metric key (:data:`METRIC_ALIASES`; any other key is already in the scheme)."""
    return METRIC_ALIASES.get(key, key)


def registered_model_name(cfg: TrackingConfig, scale: int) -> str:
    """The registry name of the final model: ``tracking.registered_model``, or ``srnas-<experiment>-x<scale>``."""
    cfg = effective(cfg)
    return cfg.registered_model or f"srnas-{cfg.experiment.removeprefix('srnas-')}-x{scale}"


# --------------------------------------------------------------------------------------------
# State file: {"<tracking uri> <experiment>": {"run_id": ..., "tracking_uri": ..., "experiment": ...}}


def _state_key(cfg: TrackingConfig) -> str:
    return f"{redact_url(_resolve_uri(cfg.uri))} {cfg.experiment}"  # a password in the URI is written nowhere


def _read_state() -> dict[str, Any]:
    try:
        state = json.loads(STATE_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _log.warning("ignoring unreadable pipeline state file %s (%s)", STATE_FILE, exc)
        return {}
    return state if isinstance(state, dict) else {}


def _recorded_run_id(cfg: TrackingConfig) -> str | None:
    entry = _read_state().get(_state_key(cfg))
    if isinstance(entry, Mapping) and isinstance(entry.get("run_id"), str):
        return entry["run_id"]
    return None


def _record(cfg: TrackingConfig, run_id: str) -> None:
    state = _read_state()
    state[_state_key(cfg)] = {"run_id": run_id, "tracking_uri": redact_url(_resolve_uri(cfg.uri)), "experiment": cfg.experiment}
    write_json(STATE_FILE, state)


def _forget(cfg: TrackingConfig, run_id: str | None = None) -> None:
    """Drop this pipeline's entry (only if it still names ``run_id``, when given); no entries left: no file."""
    state = _read_state()
    entry = state.get(_state_key(cfg))
    if entry is None or (run_id is not None and isinstance(entry, Mapping) and entry.get("run_id") != run_id):
        return
    del state[_state_key(cfg)]
    if state:
        write_json(STATE_FILE, state)
    else:
        with contextlib.suppress(FileNotFoundError):
            STATE_FILE.unlink()


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialise parent discovery/creation (and first database creation) across processes."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# mlflow access


class _QuietServerRetries(logging.Filter):
    """Drops urllib3's "Retrying ..." warnings for requests to an MLflow server (paths under ``/api/<v>/mlflow``):
    while MLflow retries, a stage says nothing; when it gives up, one line says so (:func:`_answering`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        url = record.args[-1] if isinstance(record.args, tuple) and record.args else ""
        return not (str(record.msg).startswith("Retrying") and isinstance(url, str) and "/mlflow" in url)


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "sqlalchemy", "huey"):
        logging.getLogger(name).setLevel(logging.WARNING)
    pool = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _QuietServerRetries) for f in pool.filters):
        pool.addFilter(_QuietServerRetries())


_HTTP_SET: set[str] = set()  # the HTTP_RETRIES variables this process set (not the user's)


def _srnas_sets(name: str) -> bool:
    """Whether srnas decides the MLflow HTTP variable ``name``: the environment does not set it, or srnas did."""
    value = os.environ.get(name, "").strip()
    return not value or (name in _HTTP_SET and value == HTTP_RETRIES[name])


def _bound_http_waits() -> None:
    """:data:`HTTP_RETRIES` for each variable the environment does not set."""
    for name, value in HTTP_RETRIES.items():
        if _srnas_sets(name):
            os.environ[name] = value
            _HTTP_SET.add(name)


@contextlib.contextmanager
def _probing() -> Iterator[None]:
    """:data:`PROBE_RETRIES` for the block (each variable srnas decides), then :data:`HTTP_RETRIES` again."""
    mine = [name for name in PROBE_RETRIES if _srnas_sets(name)]
    for name in mine:
        os.environ[name] = PROBE_RETRIES[name]
    try:
        yield
    finally:
        for name in mine:
            os.environ[name] = HTTP_RETRIES[name]


def _client(cfg: TrackingConfig) -> MlflowClient:
    """A client of ``cfg``'s store, opened now. A server is asked once (:func:`_probing`: it fails in seconds when
    none answers); every later request waits at most :data:`HTTP_RETRIES`."""
    uri = _resolve_uri(cfg.uri)
    db_path = _sqlite_path(uri)
    if db_path is not None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)  # pipelines run offline; respect an explicit choice
    server = uri.startswith(HTTP_SCHEMES)
    if server:
        _bound_http_waits()
    from mlflow import MlflowClient

    _quiet_mlflow()
    try:
        with (_probing() if server else contextlib.nullcontext()), _answering(uri):
            client = MlflowClient(tracking_uri=uri)
            client.get_experiment_by_name(cfg.experiment)  # opens (or creates) the store now, under the caller's lock
    except TrackingError:
        raise
    except Exception as exc:
        message = f"{_uri_source()} {redact_url(cfg.uri)!r}: cannot open the MLflow tracking store ({_scrub(str(exc), uri)})"
        raise TrackingError(message) from (None if server else exc)  # MLflow's message may hold a password
    finally:
        _quiet_mlflow()  # the store's first use may have configured more loggers
    return client


def _experiment_id(client: MlflowClient, cfg: TrackingConfig) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        try:
            return client.create_experiment(cfg.experiment, artifact_location=_artifact_uri(cfg.uri, cfg.artifact_location))
        except MlflowException:
            experiment = client.get_experiment_by_name(cfg.experiment)  # created meanwhile by another process
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"tracking.experiment {cfg.experiment!r} is deleted in {redact_url(cfg.uri)}; restore it "
            f"(mlflow experiments restore) or choose another name"
        )
    return experiment.experiment_id


def _run_status(client: MlflowClient, run_id: str) -> str | None:
    """The run's status, or None when the store has no such (active) run."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if _transport_failure(exc) is not None:
            raise  # the server did not answer: that says nothing of the run
        return None
    if run.info.lifecycle_stage != "active":
        return None
    return run.info.status


def _env_parent(client: MlflowClient) -> str | None:
    run_id = os.environ.get(PIPELINE_RUN_ENV, "").strip()
    if not run_id:
        return None
    if _run_status(client, run_id) is None:
        raise TrackingError(f"{PIPELINE_RUN_ENV}={run_id}: no such MLflow run in this tracking store")
    return run_id


def _live_recorded_parent(client: MlflowClient, cfg: TrackingConfig) -> str | None:
    """The recorded parent if it is still RUNNING; a stale entry (finished, deleted, other store) is dropped."""
    run_id = _recorded_run_id(cfg)
    if run_id is None:
        return None
    if _run_status(client, run_id) == "RUNNING":
        return run_id
    _forget(cfg, run_id)
    return None


def _create_parent(client: MlflowClient, cfg: TrackingConfig, experiment_id: str, name: str, tags: Mapping[str, Any] | None) -> str:
    all_tags = {**_base_tags("pipeline"), PIPELINE_TAG: "true", **_tag_values(tags)}
    run = client.create_run(experiment_id, tags=all_tags, run_name=name)
    _record(cfg, run.info.run_id)
    return run.info.run_id


def _terminate(client: MlflowClient, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status, end_time=int(time.time() * 1000))


def _process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat`` field 22), so that a reused pid is
    not taken for the process; "" where unknown (no such process, no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except (OSError, ValueError):
        return ""
    fields = stat.rpartition(")")[2].split()  # after "pid (comm)": field 3 onwards
    return fields[19] if len(fields) > 19 else ""


def _this_process() -> str:
    """:data:`PROCESS_TAG`'s value for this process."""
    pid = os.getpid()
    return f"{socket.gethostname()} {pid} {_process_start(pid)}".rstrip()


def _process_gone(process: str) -> bool | None:
    """Whether the process a :data:`PROCESS_TAG` value names no longer runs: True or False on its host, None when it
    ran on another host (it cannot be checked from here)."""
    host, _, rest = process.partition(" ")
    pid_text, _, start = rest.partition(" ")
    if host != socket.gethostname():
        return None
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists (another user's)
    except OSError:
        return True
    return bool(start) and _process_start(pid) != start  # the pid now names another process


def _end_stale_stage_runs(client: MlflowClient, experiment_id: str, stage: str, tags: Mapping[str, str]) -> list[str]:
    """End KILLED the runs of the same stage (``stage`` and the :data:`IDENTITY_TAGS` of ``tags``) left RUNNING by a
    process that is gone, and their RUNNING candidates; return their ids (see the module docstring)."""
    from mlflow.entities import ViewType

    identity = {key: tags.get(key) for key in IDENTITY_TAGS}
    running = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{KIND_TAG}` = 'stage' and tags.`{STAGE_TAG}` = '{stage}' and attributes.status = 'RUNNING'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=1000,
    )
    ended = []
    for run in running:
        run_tags = run.data.tags
        if any(run_tags.get(key) != value for key, value in identity.items()):
            continue
        process = run_tags.get(PROCESS_TAG)
        if process is not None and not _process_gone(process):
            continue  # still running, or on another host
        _log.warning("ending MLflow run %s (%s), left RUNNING by %s, as KILLED", run.info.run_id, run.info.run_name,
                     f"process {process}, which is gone" if process else "an earlier process")
        for candidate in client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{run.info.run_id}' and attributes.status = 'RUNNING'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
        ):
            _terminate(client, candidate.info.run_id, "KILLED")
        _terminate(client, run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    return ended


def _fail_pipeline(cfg: TrackingConfig, client: MlflowClient, parent_id: str) -> None:
    with _locked():
        if _run_status(client, parent_id) == "RUNNING":
            _terminate(client, parent_id, "FAILED")
        _forget(cfg, parent_id)


def _failure_status(exc: BaseException) -> str | None:
    """How a run ends when ``exc`` leaves it; None when it is not a failure (``sys.exit(0)``)."""
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return None
    if isinstance(exc, (KeyboardInterrupt, GeneratorExit)):
        return "KILLED"
    return "FAILED"


# --------------------------------------------------------------------------------------------
# Public API


def _remote(method: Any) -> Any:
    """A :class:`StageRun` method that talks to the store: a server that stops answering is one
    :class:`TrackingUnreachable` line (:func:`_answering`)."""

    @functools.wraps(method)
    def talking(self: StageRun, *args: Any, **kwargs: Any) -> Any:
        with _answering(self._client.tracking_uri if self._client is not None else ""):
            return method(self, *args, **kwargs)

    return talking


class StageRun:
    """One MLflow run (a stage or a search candidate). Methods log straight to the tracking store."""

    def __init__(self, client: MlflowClient | None, run_id: str, experiment_id: str = "", tags: Mapping[str, str] | None = None) -> None:
        self._client = client
        self._run_id = run_id
        self._experiment_id = experiment_id
        self._tags = dict(tags or {})

    def pipeline(self) -> StageRun:
        """The pipeline (parent) run of this stage run, to log the pipeline's headline params, metrics and report."""
        assert self._client is not None
        parent = self._tags.get(PARENT_TAG)
        if not parent:
            raise TrackingError(f"MLflow run {self._run_id} has no pipeline run")
        return StageRun(self._client, parent, self._experiment_id, {KIND_TAG: "pipeline"})

    @_remote
    def log_dataset(self, name: str, digest: str, source: str, context: str, profile: Mapping[str, Any] | None = None) -> None:
        """Log a dataset as an input of this run (MLflow's Datasets panel): its ``name``, ``digest`` (at most 36
        characters are kept), ``source`` (a path or URL) and ``context`` ("training", "evaluation", ...)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        assert self._client is not None
        remote = source.startswith(("http://", "https://"))
        dataset = Dataset(name=name, digest=digest[:36], source_type="http" if remote else "local",
                          source=json.dumps({"url" if remote else "uri": source}),
                          profile=json.dumps(dict(profile)) if profile else None)
        self._client.log_inputs(self._run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])

    @_remote
    def log_models(self, name: str, module: Any, onnx_file: str | os.PathLike[str], example: Any,
                   tags: Mapping[str, Any] | None = None) -> dict[str, str]:
        """Log ``module`` (a torch ``nn.Module``) as an MLflow PyTorch model and ``onnx_file`` as an ONNX model, both
        named ``name`` and linked to this run, each with a signature (float32 NCHW in, NCHW out, any batch and size)
        and ``example`` (a small float32 NCHW array in [0, 1]) as input example; explicit pip requirements (the
        installed versions), so MLflow infers none. Each logged model is tagged :data:`FLAVOR_TAG` and
        :data:`MODEL_DIGEST_TAG` (the ONNX file's SHA-256, how :meth:`register_model` finds it) and ``tags``.
        Returns ``{"pytorch": model_uri, "onnx": model_uri}``."""
        import importlib.metadata

        import numpy as np
        import torch

        assert self._client is not None
        example = np.ascontiguousarray(example, dtype=np.float32)
        with torch.no_grad():
            output = module(torch.from_numpy(example)).numpy()
        signature = _image_signature(example, output)
        versions = {dist: importlib.metadata.version(dist) for dist in ("torch", "onnx", "onnxruntime", "numpy")}
        requirements = {"pytorch": ["torch", "numpy"], "onnx": ["onnx", "onnxruntime", "numpy"]}
        onnx_bytes = Path(onnx_file).read_bytes()
        model_tags = {**_tag_values(tags), MODEL_DIGEST_TAG: file_sha256(onnx_file)}
        uris = {}
        with _fluent(self._client.tracking_uri, self._experiment_id) as mlflow:
            for flavor, log_model, model in (("pytorch", mlflow.pytorch.log_model, module),
                                             ("onnx", mlflow.onnx.log_model, onnx_bytes)):
                extra = ({"save_as_external_data": False, "onnx_execution_providers": ["CPUExecutionProvider"]} if flavor == "onnx"
                         else {"serialization_format": "pickle"})  # torch.export (pt2) would cost seconds
                info = log_model(model, name=f"{name}-{flavor}", run_id=self._run_id, signature=signature,
                                 input_example=example, pip_requirements=[f"{d}=={versions[d]}" for d in requirements[flavor]],
                                 tags={**model_tags, FLAVOR_TAG: flavor}, **extra)
                uris[flavor] = info.model_uri
        return uris

    @_remote
    def register_model(self, name: str, onnx_file: str | os.PathLike[str], tags: Mapping[str, Any]) -> str:
        """Register the ONNX model logged from ``onnx_file`` (found by its SHA-256 among this experiment's logged
        models) as a new version of the registered model ``name`` (created when missing), with ``tags`` on the version
        and the alias ``latest-pipeline``; returns the version. TrackingError when no logged model matches."""
        assert self._client is not None
        digest = file_sha256(onnx_file)
        found = self._client.search_logged_models(
            [self._experiment_id],
            filter_string=f"tags.`{MODEL_DIGEST_TAG}` = '{digest}' AND tags.`{FLAVOR_TAG}` = 'onnx'",
            max_results=1,
            order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        )
        if not found:
            raise TrackingError(f"{onnx_file}: no ONNX model logged with this file's SHA-256 in the experiment "
                                f"(run the export stage with tracking enabled)")
        model = found[0]
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        with _fluent(self._client.tracking_uri, self._experiment_id):  # the registry resolves models:/ through it
            version = self._client.create_model_version(name, source=model.model_uri, run_id=model.source_run_id,
                                                        tags=_tag_values(tags), model_id=model.model_id,
                                                        await_creation_for=0)
        self._client.set_registered_model_alias(name, "latest-pipeline", version.version)
        return str(version.version)

    @property
    def run_id(self) -> str:
        """The MLflow run id ("" when tracking is disabled)."""
        return self._run_id

    @_remote
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log float metrics (numpy/torch scalars converted; None skipped; NaN/inf logged as MLflow stores them), under
        their names in the one scheme (:func:`metric_key`)."""
        from mlflow.entities import Metric

        assert self._client is not None
        timestamp = int(time.time() * 1000)
        entries = [Metric(metric_key(key), value, timestamp, step or 0) for key, value in _metric_values(metrics).items()]
        for chunk in _chunks(entries, _MAX_METRICS_PER_BATCH):
            self._client.log_batch(self._run_id, metrics=chunk)

    @_remote
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params: nested mappings/dataclasses flattened to dotted keys, lists as JSON, values truncated."""
        from mlflow.entities import Param

        assert self._client is not None
        entries = [Param(key, value) for key, value in flatten_params(params).items()]
        for chunk in _chunks(entries, _MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self._run_id, params=chunk)

    @_remote
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        assert self._client is not None
        entries = [RunTag(key, value) for key, value in _tag_values(tags).items()]
        for chunk in _chunks(entries, _MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self._run_id, tags=chunk)

    @_remote
    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a file (or a whole folder) into the run's artifacts, under ``artifact_path`` if given."""
        assert self._client is not None
        local = Path(path)
        if local.is_dir():
            self._client.log_artifacts(self._run_id, str(local), artifact_path)
        elif local.is_file():
            self._client.log_artifact(self._run_id, str(local), artifact_path)
        else:
            raise FileNotFoundError(f"{local}: no such file or folder to log as an artifact")

    @contextlib.contextmanager
    def candidate(self, name: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> Iterator[StageRun]:
        """A nested run (e.g. a search candidate) whose ``mlflow.parentRunId`` is this run.

        It inherits this run's ``srnas.*`` tags; it ends FAILED if the block raises (and the exception
        propagates, so the stage fails too unless the caller catches it).
        """
        assert self._client is not None
        inherited = {key: value for key, value in self._tags.items() if key.startswith("srnas.") and key != KIND_TAG}
        run_tags = {
            **_base_tags("candidate"),
            **inherited,
            PARENT_TAG: self._run_id,
            CANDIDATE_TAG: name,
            **_tag_values(tags),
        }
        with _answering(self._client.tracking_uri):
            run = self._client.create_run(self._experiment_id, tags=run_tags, run_name=name)
        child = StageRun(self._client, run.info.run_id, self._experiment_id, run_tags)
        with _run_scope(self._client, child.run_id):
            if params:
                child.log_params(params)
            yield child


def _image_signature(example: Any, output: Any) -> Any:
    """float32 NCHW in and out, batch, height and width free (-1), channels as in ``example`` / ``output``."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(array: Any) -> Any:
        return Schema([TensorSpec(np.dtype(np.float32), (-1, int(array.shape[1]), -1, -1))])

    return ModelSignature(inputs=spec(example), outputs=spec(output))


@contextlib.contextmanager
def _fluent(uri: str, experiment_id: str) -> Iterator[Any]:
    """The ``mlflow`` module with its tracking URI and experiment (``MLFLOW_EXPERIMENT_ID``) set to ``uri`` and
    ``experiment_id`` for the block (the flavours' ``log_model`` read them), then put back, environment included
    (``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI``, which :func:`effective` reads); no run is started."""
    import mlflow
    import mlflow.onnx
    import mlflow.pytorch
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = {name: os.environ.get(name) for name in (URI_ENV, "MLFLOW_EXPERIMENT_ID")}
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        with _use_tracking_uri(uri):
            yield mlflow
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _quiet_mlflow()


class _DisabledRun(StageRun):
    """Tracking disabled: the same API, doing nothing."""

    def __init__(self) -> None:
        super().__init__(None, "")

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        pass

    def pipeline(self) -> StageRun:
        return self

    def log_dataset(self, name: str, digest: str, source: str, context: str, profile: Mapping[str, Any] | None = None) -> None:
        pass

    def log_models(self, name: str, module: Any, onnx_file: str | os.PathLike[str], example: Any,
                   tags: Mapping[str, Any] | None = None) -> dict[str, str]:
        return {}

    def register_model(self, name: str, onnx_file: str | os.PathLike[str], tags: Mapping[str, Any]) -> str:
        return ""

    @contextlib.contextmanager
    def candidate(self, name: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> Iterator[StageRun]:
        yield self


_DISABLED = _DisabledRun()


@contextlib.contextmanager
def _run_scope(client: MlflowClient, run_id: str, on_failure: Any = None) -> Iterator[None]:
    """End ``run_id`` FINISHED, or FAILED/KILLED when the block raises (then call ``on_failure`` and re-raise); when
    the server stopped answering (:class:`TrackingUnreachable`) the run is left as it is: asking again would only wait."""
    uri = client.tracking_uri
    try:
        yield
    except TrackingUnreachable:
        raise
    except BaseException as exc:
        status = _failure_status(exc)
        if status is None:
            with _answering(uri):
                _terminate(client, run_id, "FINISHED")
            raise
        try:
            with _answering(uri):
                _terminate(client, run_id, status)
                if on_failure is not None:
                    on_failure()
        except Exception as tracking_exc:  # never hide the stage's own error behind a tracking one
            _log.warning("could not record the failure of MLflow run %s: %s", run_id, _scrub(str(tracking_exc), uri))
        raise
    with _answering(uri):
        _terminate(client, run_id, "FINISHED")


def start_pipeline(cfg: TrackingConfig, name: str, tags: Mapping[str, Any] | None = None) -> str:
    """Create the parent run (RUNNING, tag ``srnas.pipeline=true``), record it in :data:`STATE_FILE`, return its id.

    A still-RUNNING parent recorded earlier (an abandoned run) is ended KILLED first. When
    ``SRNAS_PIPELINE_RUN_ID`` is set, that run is the pipeline run: nothing is created and its id is
    returned. Disabled tracking returns "".
    """
    cfg = effective(cfg)
    if not cfg.enabled:
        return ""
    with _locked(), _answering(_resolve_uri(cfg.uri)):
        client = _client(cfg)
        env_parent = _env_parent(client)
        if env_parent is not None:
            return env_parent
        stale = _live_recorded_parent(client, cfg)
        if stale is not None:
            _log.warning("ending abandoned pipeline run %s as KILLED", stale)
            _terminate(client, stale, "KILLED")
            _forget(cfg, stale)
        return _create_parent(client, cfg, _experiment_id(client, cfg), name, tags)


def end_pipeline(cfg: TrackingConfig, status: str = "FINISHED") -> str | None:
    """Terminate the pipeline run (``SRNAS_PIPELINE_RUN_ID`` or the recorded one) and forget it.

    ``status`` is "FINISHED" or "FAILED" (or "KILLED"). Only a RUNNING run changes: a parent already
    marked FAILED by a failed stage stays FAILED. Returns the run id, or None when there was no pipeline run to end (then
    mlflow is not even imported).
    """
    cfg = effective(cfg)
    if status not in END_STATUSES:
        raise ValueError(f"end_pipeline: status must be one of {', '.join(END_STATUSES)}, got {status!r}")
    if not cfg.enabled:
        return None
    if not os.environ.get(PIPELINE_RUN_ENV, "").strip() and _recorded_run_id(cfg) is None:
        return None
    with _locked(), _answering(_resolve_uri(cfg.uri)):
        client = _client(cfg)
        run_id = _env_parent(client) or _recorded_run_id(cfg)
        if run_id is None:
            return None
        if _run_status(client, run_id) == "RUNNING":
            _terminate(client, run_id, status)
        _forget(cfg, run_id)
        return run_id


def current_pipeline(cfg: TrackingConfig) -> str | None:
    """The pipeline run id stages would join now (env var, else the state file), without checking the store."""
    cfg = effective(cfg)
    if not cfg.enabled:
        return None
    return os.environ.get(PIPELINE_RUN_ENV, "").strip() or _recorded_run_id(cfg)


@contextlib.contextmanager
def stage_run(
    cfg: TrackingConfig,
    stage: str,
    params: Mapping[str, Any],
    tags: Mapping[str, Any] | None = None,
) -> Iterator[StageRun]:
    """A child run of the pipeline run for one stage; yields a :class:`StageRun`.

    Joins ``SRNAS_PIPELINE_RUN_ID`` or the recorded parent, else creates and records one. Logs
    ``params`` (flattened) and tags ``srnas.stage``, ``mlflow.parentRunId``, the git commit and this process
    (:data:`PROCESS_TAG`); first ends KILLED the runs of the same stage a killed process left RUNNING.
    If the block raises, the run ends FAILED, the parent is marked FAILED and forgotten, and the
    exception propagates; otherwise the run ends FINISHED (the parent stays RUNNING).
    """
    cfg = effective(cfg)
    if not cfg.enabled:
        yield _DISABLED
        return
    with _locked(), _answering(_resolve_uri(cfg.uri)):
        client = _client(cfg)
        experiment_id = _experiment_id(client, cfg)
        parent_id = _env_parent(client) or _live_recorded_parent(client, cfg)
        if parent_id is None:
            parent_id = _create_parent(client, cfg, experiment_id, "pipeline", None)
        user_tags = _tag_values(tags)
        _end_stale_stage_runs(client, experiment_id, stage, user_tags)
        run_tags = {**_base_tags("stage"), **user_tags, STAGE_TAG: stage, PARENT_TAG: parent_id, PROCESS_TAG: _this_process()}
        model = user_tags.get("srnas.model")
        run = client.create_run(experiment_id, tags=run_tags, run_name=f"{stage}:{model}" if model else stage)
    current = StageRun(client, run.info.run_id, experiment_id, run_tags)
    if client.tracking_uri.startswith(HTTP_SCHEMES):
        _log.info("MLflow run %s: %s/#/experiments/%s/runs/%s", run.info.run_name,
                  redact_url(client.tracking_uri).rstrip("/"), experiment_id, current.run_id)
    with _run_scope(client, current.run_id, on_failure=lambda: _fail_pipeline(cfg, client, parent_id)):
        if params:
            current.log_params(params)
        yield current


def query_runs(cfg: TrackingConfig, experiments: list[str] | None = None) -> list[dict[str, Any]]:
    """Every FINISHED stage run in ``experiments`` (names; all active ones if None), oldest first.

    Each item: ``run_id``, ``run_name``, ``experiment``, ``stage``, ``pipeline_run_id``,
    ``start_time``/``end_time`` (ms), ``tags`` (the ``srnas.*`` tags: ``srnas.model``,
    ``srnas.scale``, ``srnas.data``, ...), ``params`` (str) and ``metrics`` (float, latest value).
    Disabled tracking, or a SQLite store that does not exist yet, gives ``[]`` (and creates nothing).
    """
    cfg = effective(cfg)
    if not cfg.enabled:
        return []
    db_path = _sqlite_path(_resolve_uri(cfg.uri))
    if db_path is not None and not db_path.exists():
        if experiments:
            raise TrackingError(f"tracking.uri {cfg.uri!r}: no tracking database yet, so no experiment {experiments[0]!r}")
        return []
    from mlflow.entities import ViewType

    with _answering(_resolve_uri(cfg.uri)):
        client = _client(cfg)
        if experiments is None:
            found = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
        else:
            found = []
            for name in experiments:
                experiment = client.get_experiment_by_name(name)
                if experiment is None or experiment.lifecycle_stage != "active":
                    known = sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY))
                    raise TrackingError(f"experiment {name!r} not found in {redact_url(cfg.uri)}; known: {', '.join(known) or 'none'}")
                found.append(experiment)
        if not found:
            return []
        names = {e.experiment_id: e.name for e in found}
        rows: list[dict[str, Any]] = []
        page_token = None
        while True:
            page = client.search_runs(
                list(names),
                filter_string=f"tags.`{KIND_TAG}` = 'stage' and attributes.status = 'FINISHED'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=page_token,
            )
            for run in page:
                tags = run.data.tags
                rows.append(
                    {
                        "run_id": run.info.run_id,
                        "run_name": run.info.run_name,
                        "experiment": names[run.info.experiment_id],
                        "stage": tags.get(STAGE_TAG, ""),
                        "pipeline_run_id": tags.get(PARENT_TAG),
                        "start_time": run.info.start_time,
                        "end_time": run.info.end_time,
                        "tags": {key: value for key, value in tags.items() if key.startswith("srnas.")},
                        "params": dict(run.data.params),
                        "metrics": {key: float(value) for key, value in run.data.metrics.items()},
                    }
                )
            page_token = page.token
            if not page_token:
                break
    return rows
