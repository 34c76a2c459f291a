"""End to end: the command line on 1 and 8 devices and on 2 processes; faults (SIGTERM, kill -9
during a checkpoint save, a full disk, a damaged checkpoint, a killed process of two) and
resume; export and the workdir files. Runs the tiny `runlocal` preset; every test compares
against one uninterrupted 8-device run (the `reference_run` fixture)."""

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


def _launch_two_processes(workdir, logs_dir, name):
    """The run as 2 processes of 4 CPU devices (jax.distributed, the multi-host path)."""
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
               f"--workdir={workdir}", "--config.total_steps=6"]  # fmt: skip
        log = open(logs_dir / f"{name}_rank{rank}.log", "w")
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=log))
    return procs


def _wait_all(procs, timeout=600):
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        # One rank dying leaves the other waiting on the coordinator: never leave it behind.
        for p in procs:
            p.kill()


def test_two_processes_survive_sigterm_and_a_killed_process_and_match_one(reference_run, tmp_path):
    """jax.distributed with 2 local processes: SIGTERM to both (a preempted slice) saves one
    checkpoint at a step both agree on; kill -9 of one process loses only unsaved steps; the
    finished run logs the same losses and kNN as one process with 8 devices."""
    reference, _ = reference_run
    workdir, metrics = tmp_path / "run", tmp_path / "run" / "metrics.jsonl"

    procs = _launch_two_processes(workdir, tmp_path, "first")
    _wait_for_lines(metrics, 1, procs[0])
    for p in procs:
        p.send_signal(signal.SIGTERM)
    codes = _wait_all(procs)
    logs = [(tmp_path / f"first_rank{r}.log").read_text() for r in range(2)]
    assert codes == [75, 75], logs[0][-3000:]
    saved = {int(x.split("saved checkpoint ")[1].split()[0])
             for log in logs for x in log.splitlines() if x.startswith("preempted:")}  # fmt: skip
    assert len(saved) == 1 and min(saved) < 6  # one step, the same on both hosts
    saved = saved.pop()

    procs = _launch_two_processes(workdir, tmp_path, "second")
    # The log holds steps 1..saved and the resume event; then one new step, and a crash.
    _wait_for_lines(metrics, saved + 2, procs[0])
    procs[1].kill()
    # The survivor waits for its peer in the next collective, until JAX's heartbeat timeout;
    # a scheduler (SLURM, the TPU launch script) tears the whole job down instead, as here.
    time.sleep(2)
    for p in procs:
        p.kill()
        p.wait()
    assert f"resuming at step {saved}" in (tmp_path / "second_rank0.log").read_text()

    procs = _launch_two_processes(workdir, tmp_path, "third")
    codes = _wait_all(procs)
    out = (tmp_path / "third_rank0.log").read_text()
    assert codes == [0, 0], out[-3000:]
    assert "8 cpu device(s), 2 host(s)" in out and "global batch 32 = 8 x 4 per device" in out
    assert "resuming at step" in out
    two, one = losses_by_step(str(workdir)), losses_by_step(reference)
    assert sorted(two) == sorted(one) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([two[s] for s in one], [one[s] for s in one], rtol=1e-5)
    knn = [json.load(open(os.path.join(d, "results.json")))["knn_top1"]
           for d in (reference, workdir)]  # fmt: skip
    np.testing.assert_allclose(knn[1], knn[0], atol=1e-6)


def _wait_for_lines(path, count, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path) and len(open(path).read().splitlines()) >= count:
            return
        time.sleep(0.02)


def test_sigterm_saves_at_the_next_step_and_the_rerun_recomputes_nothing(reference_run, tmp_path):
    """What a preempted TPU VM or SLURM job gets: SIGTERM, then a checkpoint at the next step
    boundary, exit status 75, and a rerun that goes on from there and logs every step once."""
    reference, _ = reference_run
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    proc = run_cli(workdir, "--config.total_steps=6", wait=False)
    _wait_for_lines(os.path.join(workdir, "metrics.jsonl"), 1, proc)  # step 1 (compiled) done
    assert proc.poll() is None, "the run ended before SIGTERM could be sent"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 75
    log = open(os.path.join(tmp_path, "killed_run.log")).read()
    line = [x for x in log.splitlines() if x.startswith("preempted:")]
    assert len(line) == 1, log[-3000:]
    saved = int(line[0].split("saved checkpoint ")[1].split()[0])
    assert 1 <= saved < 6 and "Traceback" not in log
    assert saved in [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))]
    assert not os.path.exists(os.path.join(workdir, "results.json"))

    result = run_cli(workdir, "--config.total_steps=6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming at step {saved}" in result.stdout
    steps = [json.loads(x)["step"] for x in open(os.path.join(workdir, "metrics.jsonl"))
             if '"loss"' in x]  # fmt: skip
    assert steps == [1, 2, 3, 4, 5, 6]  # each step once: none was recomputed
    resumed, uninterrupted = losses_by_step(workdir), losses_by_step(reference)
    np.testing.assert_allclose(
        [resumed[s] for s in steps], [uninterrupted[s] for s in steps], rtol=1e-5
    )


# Run as `python -c` instead of `-m ssl_jax.main`: orbax's last step of a save (renaming the
# finished temporary folder) waits 60 s for checkpoint 4, and first writes `saving_4`, so the
# test can kill the run while that checkpoint is written but not yet committed.
_SLOW_COMMIT = """
import asyncio, os, runpy, sys
from orbax.checkpoint._src.path import atomicity
original = atomicity.AtomicRenameTemporaryPath.finalize
async def slow_finalize(self, *args, **kwargs):
    if str(self.get_final()).rstrip("/").endswith("/4"):
        open(os.path.join(os.environ["MARKER_DIR"], "saving_4"), "w").close()
        await asyncio.sleep(60)
    return await original(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize
sys.argv = ["ssl_jax.main", *sys.argv[1:]]
runpy.run_module("ssl_jax.main", run_name="__main__")
"""


def test_kill_9_during_a_checkpoint_save_keeps_the_previous_one(reference_run, tmp_path):
    """Saves run in the background; a kill -9 while one is written loses only that one."""
    reference, _ = reference_run
    workdir = str(tmp_path / "run")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", MARKER_DIR=str(tmp_path))  # fmt: skip
    cmd = [sys.executable, "-c", _SLOW_COMMIT, f"--config={CONFIG}:runlocal",
           f"--workdir={workdir}", "--config.total_steps=6"]  # fmt: skip
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    marker = tmp_path / "saving_4"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.02)
    assert marker.exists(), (tmp_path / "run.log").read_text()[-3000:]
    # Training went on while checkpoint 4 was written: the save does not stall the steps.
    _wait_for_lines(os.path.join(workdir, "metrics.jsonl"), 6, proc, timeout=120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    logged = losses_by_step(workdir)
    assert sorted(logged) == [1, 2, 3, 4, 5, 6]
    assert "4" not in os.listdir(os.path.join(workdir, "checkpoints"))

    result = run_cli(workdir, "--config.total_steps=6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming at step 2" in result.stdout
    resumed, uninterrupted = losses_by_step(workdir), losses_by_step(reference)
    np.testing.assert_allclose(
        [resumed[s] for s in range(1, 7)], [uninterrupted[s] for s in range(1, 7)], rtol=1e-5
    )


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB filesystem (tmpfs): room for the config, the logs and one checkpoint of the
    runlocal model (1.1 MB), not for two. Needs the right to mount, as root has."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if made.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_one_line_and_the_rerun_resumes_once_there_is_space(reference_run, small_disk):
    reference, _ = reference_run
    workdir = str(small_disk / "run")
    cache = f"--config.compilation_cache_dir={small_disk.parent / 'cache'}"
    result = run_cli(workdir, "--config.total_steps=6", cache)
    assert result.returncode == 4, result.stdout + result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "no space left on device" in errors[0] and "checkpoint 2 is intact" in errors[0]
    assert os.path.join(workdir, "checkpoints") in errors[0]

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    result = run_cli(workdir, "--config.total_steps=6", cache)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming at step 2" in result.stdout
    resumed, uninterrupted = losses_by_step(workdir), losses_by_step(reference)
    np.testing.assert_allclose(resumed[6], uninterrupted[6], rtol=1e-5)
