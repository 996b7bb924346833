"""The device agent (``srnas device serve``) as a real process on 127.0.0.1, and targets measured through it.

No timing is asserted (the CPU is shared): measurements only have to come back positive and land where they belong
(the table under the agent's fingerprint, the agent's working folder). What is asserted is the behaviour: tokens,
size limits, one measurement at a time, the spread limit, retries across an agent restart, and a table build that
resumes where a failed one stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import torch

from srnas.arch.network import SubnetSR
from srnas.arch.space import CellConfig, SearchSpace, SubnetConfig
from srnas.config import TargetConfig
from srnas.latency import measure, wire
from srnas.latency.layers import LayerKey, enumerate_layers
from srnas.latency.table import PENDING, LatencyCache, build_table
from srnas.latency.targets import resolve_target
from srnas.loading import registered_model
from srnas.runtimes import remote
from srnas.runtimes.remote import AgentClient, DeviceError
from srnas.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-0123456789"
HW = (12, 16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent:
    """``srnas device serve`` in a child process; :meth:`kill` and :meth:`start` again on the same port."""

    def __init__(self, workdir: Path, *args: str, taskset: str | None = None) -> None:
        self.workdir, self.args, self.taskset = workdir, args, taskset
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        cmd = [sys.executable, "-m", "srnas.cli", "device", "serve", "--port", str(self.port), "--workdir",
               str(self.workdir), *self.args]
        if self.taskset:
            cmd = ["taskset", "-c", self.taskset, *cmd]
        env = {**os.environ, "SRNAS_DEVICE_TOKEN": TOKEN, "PYTHONPATH": str(ROOT / "src")}
        self.process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, f"agent exited: {self.process.stderr.read().decode()[-2000:]}"
            try:
                if requests.get(f"{self.url}/v1/info", timeout=2, headers=_auth()).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the agent did not answer within 60 s"
            time.sleep(0.2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def agents(tmp_path, monkeypatch):
    monkeypatch.setenv("SRNAS_DEVICE_TOKEN", TOKEN)
    monkeypatch.setattr(remote, "BACKOFF_S", 0.1)  # the client's back-off: short in tests
    remote.agent_client.cache_clear()
    started: list[Agent] = []

    def start(name: str = "agent", *args: str, taskset: str | None = None) -> Agent:
        agent = Agent(tmp_path / name, *args, taskset=taskset).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill()
    remote.agent_client.cache_clear()


def _target(url: str, runtime: str = "torch_fp32", threads: int = 1):
    precision = {"torch_fp32": "fp32", "onnxruntime_fp32": "fp32", "auto": "auto"}[runtime]
    return resolve_target(TargetConfig("dev", url, runtime, precision, threads, HW), 2, "unused").target


def _smoke_layers() -> list[LayerKey]:
    settings = load_settings(ROOT / "params.yaml", (ROOT / "config" / "smoke.yaml",), None)
    return list(enumerate_layers(SearchSpace(settings.supernet.space), 2, 16))


def test_requests_without_the_token_or_too_large_are_refused(agents):
    agent = agents("agent", "--max-request-mb", "0.01")
    assert requests.get(f"{agent.url}/v1/info", timeout=10).status_code == 401
    wrong = requests.get(f"{agent.url}/v1/info", timeout=10, headers=_auth("not-the-token"))
    assert wrong.status_code == 401 and "token" in wrong.json()["detail"]
    body = {"target": {}, "padding": "x" * 20000}  # 20 kB against a 10 kB limit
    big = requests.post(f"{agent.url}/v1/layer", json=body, timeout=10, headers=_auth())
    assert big.status_code == 413 and "limit" in big.json()["detail"]
    unknown = requests.post(f"{agent.url}/v1/rm-rf", json={}, timeout=10, headers=_auth())
    assert unknown.status_code == 404
    bad = requests.post(f"{agent.url}/v1/layer", json={"target": {"name": "t"}}, timeout=10, headers=_auth())
    assert bad.status_code == 400 and "request" in bad.json()["detail"]
    # through the client: a clear one-line error naming the agent
    client = AgentClient(agent.url, "not-the-token", retries=0)
    with pytest.raises(DeviceError, match=rf"device {agent.url}: info refused \(401\)"):
        client.info()
    # a trained network larger than the agent accepts
    model = SubnetSR(SubnetConfig(16, (CellConfig("conv"),) * 3), 2)
    with pytest.raises(DeviceError, match=r"refused \(413\)"):
        measure.time_network(_target(agent.url), model, warmup=0, runs=1)


def test_a_target_on_an_agent_is_resolved_and_measured_there(agents):
    agent = agents("agent")
    info = AgentClient(agent.url, TOKEN).info()
    assert "torch_fp32" in info["runtimes"] and info["protocol"] == remote.PROTOCOL_VERSION
    auto = _target(agent.url, "auto", threads=0)  # auto and threads 0 resolved by the agent, for its machine
    assert auto.runtime in info["runtimes"] and auto.threads == info["fingerprint"]["usable_cpus"]
    assert (agent.workdir / "cache" / "auto").is_dir()  # its choice kept in its own working folder
    target = _target(agent.url, "onnxruntime_fp32")
    assert target.fingerprint()["usable_cpus"] == info["fingerprint"]["usable_cpus"]
    assert measure.target_available(target)
    reference = measure.measure_reference(target, warmup=1, runs=3, rounds=2)
    layer = measure.measure_layer(target, LayerKey("conv", 16, 16), warmup=1, runs=3, rounds=3, reference_ms=reference)
    net = SubnetConfig(16, (CellConfig("conv"), CellConfig("skip")))
    timing = measure.time_network(target, net, warmup=1, runs=3, rounds=3, reference_ms=reference)
    rounds = measure.compare_layers(target, LayerKey("conv", 16, 16), LayerKey("conv", 16, 8), warmup=1, runs=3, rounds=3)
    assert reference > 0 and layer > 0 and timing.wall_clock_ms > 0 and timing.normalised_ms > 0
    assert len(rounds) == 3
    assert list((agent.workdir / "tmp").glob("srnas-nets-*")), "the network was exported inside the agent's folder"


def test_trained_networks_travel_as_descriptions_and_weights(agents):
    """The oracle: what the agent rebuilds from a request computes what the original computes (no pickle involved)."""
    torch.manual_seed(0)
    searched = SubnetSR(SubnetConfig(8, (CellConfig("conv"), CellConfig("skip"))), 2).eval()
    registered = registered_model("ecbsr_m1c8", 2)
    x = torch.rand(1, 3, 10, 12)
    for original in (searched, registered):
        rebuilt = wire.network_from_wire(wire.network_to_wire(original))
        torch.testing.assert_close(rebuilt(x), original(x), rtol=0, atol=0)
    with pytest.raises(Exception, match="searched network or a registered model"):
        wire.network_to_wire(torch.nn.Conv2d(3, 3, 3))


def test_one_measurement_at_a_time_and_the_spread_limit(agents):
    agent = agents("agent", "--wait-s", "0", "--max-spread", "0.000001")
    target = _target(agent.url)
    slow = {"target": wire.target_to_wire(target), "network": {"subnet": SubnetConfig(32, (CellConfig("conv"),) * 4).to_dict()},
            "warmup": 0, "runs": 100, "rounds": 1}
    slow["target"]["input_hw"] = [90, 160]  # milliseconds a call: the measurement runs for a second or more
    first = threading.Thread(target=requests.post, args=(f"{agent.url}/v1/network",),
                             kwargs={"json": slow, "headers": _auth(), "timeout": 120})
    first.start()
    deadline = time.monotonic() + 30
    while not requests.get(f"{agent.url}/v1/info", headers=_auth(), timeout=10).json()["busy"]:
        assert time.monotonic() < deadline, "the first measurement never started"
        time.sleep(0.05)
    busy = requests.post(f"{agent.url}/v1/reference", json={"target": slow["target"], "warmup": 0, "runs": 1, "rounds": 1},
                         headers=_auth(), timeout=30)
    first.join()
    assert busy.status_code == 503 and "busy" in busy.json()["detail"] and busy.headers["Retry-After"]
    with pytest.raises(DeviceError, match=r"spread .* above this agent's limit"):
        measure.measure_layer(target, LayerKey("conv", 16, 16), warmup=0, runs=3, rounds=5, reference_ms=1.0)


def test_a_table_build_survives_an_agent_restart_and_resumes_after_a_failure(agents, tmp_path):
    """Built through a real agent for the smoke space: the agent killed mid-build and restarted (the client retries
    and the build finishes), then killed for good (the build fails with a clear error, what it measured kept) and
    started again: the rerun measures only what is left."""
    agent = agents("agent")
    target = _target(agent.url)
    layers = _smoke_layers()
    calls: list[str] = []
    killed = threading.Event()

    def restart_later() -> None:
        time.sleep(1.0)
        agent.start()

    def measuring(t, layer, **timing):
        calls.append(layer.id)
        if len(calls) == 5:  # mid-build: the agent dies, comes back a second later
            agent.kill()
            killed.set()
            threading.Thread(target=restart_later).start()
        return measure.measure_layer(t, layer, **timing)

    cache_dir = tmp_path / "cache"
    table = build_table(target, layers, granularity=16, warmup=0, runs=2, cache_dir=cache_dir, measure=measuring)
    assert killed.is_set() and set(table.entries) == set(layers) and table.measured == len(layers)
    assert all(ms > 0 for ms in table.entries.values())
    assert len(calls) == len(layers)  # each layer measured once: the lost request was retried by the client

    # Killed for good mid-build: the client gives up with one line naming the agent; what was measured is kept.
    remote.agent_client.cache_clear()
    cache_dir2 = tmp_path / "cache2"
    calls.clear()

    def dies(t, layer, **timing):
        calls.append(layer.id)
        if len(calls) == 8:
            agent.kill()
        return measure.measure_layer(t, layer, **timing)

    remote_retries = remote.RETRIES
    remote.RETRIES = 1
    try:
        with pytest.raises(DeviceError, match=rf"device {agent.url}: unreachable after retries"):
            build_table(target, layers, granularity=16, warmup=0, runs=2, rounds=2, cache_dir=cache_dir2, measure=dies)
    finally:
        remote.RETRIES = remote_retries
        remote.agent_client.cache_clear()
    pending = LatencyCache(cache_dir2, target.fingerprint()).data[PENDING]
    kept = sum(len(v) for section in pending.values() for v in section.values())
    assert kept == 7  # the passes measured before the agent died

    agent.start()
    calls.clear()
    resumed = build_table(target, layers, granularity=16, warmup=0, runs=2, rounds=2, cache_dir=cache_dir2,
                          measure=lambda t, layer, **timing: calls.append(layer.id) or measure.measure_layer(t, layer, **timing))
    assert set(resumed.entries) == set(layers)
    assert len(calls) == 2 * len(layers) - 7  # two passes per layer in all, the 7 kept not measured again
    assert not any(LatencyCache(cache_dir2, target.fingerprint()).data[PENDING].values())


def test_a_device_whose_fingerprint_changed_gets_a_table_of_its_own(agents, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two usable CPUs to pin the agent to one")
    layers = _smoke_layers()[:4]
    agent = agents("agent")
    before = _target(agent.url)
    build_table(before, layers, granularity=16, warmup=0, runs=1, cache_dir=tmp_path / "cache")
    agent.kill()
    remote.agent_client.cache_clear()
    pinned = agents("pinned", taskset="0")  # the same device with one CPU: another fingerprint
    after = _target(pinned.url)
    assert after.fingerprint_id() != before.fingerprint_id()
    rebuilt = build_table(after, layers, granularity=16, warmup=0, runs=1, cache_dir=tmp_path / "cache")
    assert rebuilt.measured == len(layers) and rebuilt.reused == 0
