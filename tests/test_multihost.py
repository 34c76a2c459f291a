"""Two processes on one machine (4 CPU devices each, gloo collectives) train exactly like one
process with 8 devices: each host reads only its rows, and the global batch is the same."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "simclr.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir):
    return [sys.executable, "-m", "ssl_jax.main", f"--config={CONFIG}:runlocal",
            f"--workdir={workdir}", "--config.total_steps=4"]  # fmt: skip


def _losses(workdir):
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_two_processes_match_one(tmp_path):
    base = dict(os.environ, JAX_PLATFORMS="cpu")
    single = str(tmp_path / "single")
    env = dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run(
        _command(single), env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]

    multi = str(tmp_path / "multi")
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(
            base,
            XLA_FLAGS="--xla_force_host_platform_device_count=4",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(rank),
        )
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen(_command(multi), env=env, cwd=REPO, stdout=log, stderr=log))
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        # One rank dying leaves the other waiting on the coordinator: never leave it behind.
        for p in procs:
            p.kill()
    assert codes == [0, 0], (tmp_path / "rank0.log").read_text()[-3000:]

    out = (tmp_path / "rank0.log").read_text()
    assert "8 cpu device(s), 2 host(s)" in out and "global batch 32 = 8 x 4 per device" in out
    one, two = _losses(single), _losses(multi)
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    np.testing.assert_allclose([two[s] for s in one], [one[s] for s in one], rtol=1e-5)
    results = [json.load(open(os.path.join(d, "results.json"))) for d in (single, multi)]
    np.testing.assert_allclose(results[1]["knn_top1"], results[0]["knn_top1"], atol=1e-6)
