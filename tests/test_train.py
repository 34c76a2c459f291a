"""End to end: the command line on 1 and 8 devices and on 2 processes, kill -9 and resume,
damaged checkpoints, export, and the workdir files. Runs the tiny `runlocal` preset; every test
compares against one uninterrupted 8-device run (the `reference_run` fixture)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "simclr.py")


def run_cli(workdir, *overrides, devices=8, preset="runlocal", wait=True):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "ssl_jax.main", f"--config={CONFIG}:{preset}",
           f"--workdir={workdir}", *overrides]  # fmt: skip
    if not wait:
        # Output to a file: an unread pipe would fill up and stall the child.
        log = open(os.path.join(os.path.dirname(workdir), "killed_run.log"), "w")
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def losses_by_step(workdir) -> dict[int, float]:
    """The last logged loss for each step (a resumed run re-logs the steps it redoes)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "loss" in record:
                out[record["step"]] = record["loss"]
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 8-device run of 6 steps with checkpoints every 2."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    result = run_cli(
        workdir,
        "--config.total_steps=6",
        "--config.eval_random_init=True",
        "--config.eval_every_steps=3",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir, result


def test_cli_writes_the_workdir_contract(reference_run):
    workdir, result = reference_run
    for name in ("config.json", "metrics.jsonl", "results.json", "export", "checkpoints",
                 "export/torchvision.safetensors"):  # fmt: skip
        assert os.path.exists(os.path.join(workdir, name)), name
    assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    records = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    for key in ("step", "epoch", "loss", "lr", "images_per_sec", "embedding_std", "effective_rank"):
        assert key in records[0], key
    # The evaluation during training (eval_every_steps=3) lands in the step-3 record.
    by_step = {r["step"]: r for r in records if "loss" in r}
    assert 0.0 <= by_step[3]["knn_top1"] <= 1.0 and "knn_top1" not in by_step[2]
    results = json.load(open(os.path.join(workdir, "results.json")))
    for key in ("knn_top1", "knn_top5", "linear_top1", "random_init_knn_top1",
                "random_init_knn_top5", "random_init_linear_top1"):  # fmt: skip
        assert 0.0 <= results[key] <= 1.0, key
    # runlocal evaluates on 1,000 evenly spaced train and test images (eval_max_examples).
    assert (results["eval_train_examples"], results["eval_test_examples"]) == (1000, 1000)
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [2, 4, 6]
    out = result.stdout
    assert "8 cpu device(s)" in out and "global batch 32 = 8 x 4 per device" in out
    assert "step 6/6" in out and "ETA" in out and "img/s" in out
    assert "random-init encoder" in out


def test_one_device_logs_the_same_losses_as_eight(reference_run, tmp_path):
    workdir8, _ = reference_run
    result = run_cli(str(tmp_path), "--config.total_steps=6", devices=1)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 cpu device(s)" in result.stdout
    one, eight = losses_by_step(str(tmp_path)), losses_by_step(workdir8)
    assert sorted(one) == sorted(eight) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([one[s] for s in one], [eight[s] for s in one], rtol=2e-4)


def test_kill_9_then_rerun_reproduces_every_later_loss(reference_run, tmp_path):
    reference, _ = reference_run
    workdir = str(tmp_path)
    proc = run_cli(workdir, "--config.total_steps=6", wait=False)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    # Kill mid-run: after step 3 is logged (step 2 checkpointed), before the run ends.
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(workdir, "results.json"))

    result = run_cli(workdir, "--config.total_steps=6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming at step" in result.stdout
    resumed, uninterrupted = losses_by_step(workdir), losses_by_step(reference)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(
        [resumed[s] for s in range(1, 7)], [uninterrupted[s] for s in range(1, 7)], rtol=1e-5
    )


def test_damaged_newest_checkpoint_is_skipped_with_a_warning(reference_run, tmp_path):
    reference, _ = reference_run
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    newest = os.path.join(workdir, "checkpoints", "6")
    for root, _, files in os.walk(newest):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage")
    result = run_cli(workdir, "--config.total_steps=6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"checkpoint {newest} cannot be restored" in result.stdout
    assert "resuming at step 4" in result.stdout
    # Moved aside, not deleted.
    assert os.listdir(os.path.join(workdir, "checkpoints_unreadable"))
    resumed, uninterrupted = losses_by_step(workdir), losses_by_step(reference)
    np.testing.assert_allclose(resumed[6], uninterrupted[6], rtol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_four_devices_match_one_of_eight(reference_run, tmp_path):
    """jax.distributed with 2 local processes (the multi-host path): same losses, same kNN."""
    reference, _ = reference_run
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=4",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(rank),
        )
        cmd = [sys.executable, "-m", "ssl_jax.main", f"--config={CONFIG}:runlocal",
               f"--workdir={tmp_path / 'run'}", "--config.total_steps=6"]  # fmt: skip
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=log))
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        # One rank dying leaves the other waiting on the coordinator: never leave it behind.
        for p in procs:
            p.kill()
    assert codes == [0, 0], (tmp_path / "rank0.log").read_text()[-3000:]

    out = (tmp_path / "rank0.log").read_text()
    assert "8 cpu device(s), 2 host(s)" in out and "global batch 32 = 8 x 4 per device" in out
    two, one = losses_by_step(str(tmp_path / "run")), losses_by_step(reference)
    assert sorted(two) == sorted(one) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([two[s] for s in one], [one[s] for s in one], rtol=1e-5)
    knn = [json.load(open(os.path.join(d, "results.json")))["knn_top1"]
           for d in (reference, tmp_path / "run")]  # fmt: skip
    np.testing.assert_allclose(knn[1], knn[0], atol=1e-6)
