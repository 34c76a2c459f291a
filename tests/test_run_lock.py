"""One run per workdir (ssl_jax/run_lock.py): refused while held, taken over once the holder died.

Local paths run the flock() protocol; `ram://` (TensorFlow's in-memory filesystem, read through
tf.io.gfile like gs://, no network) runs the object-store protocol.
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import tensorflow as tf

from ssl_jax import run_lock
from ssl_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A launch in a subprocess: waits at a file barrier, acquires, says so, holds until told to stop.
CHILD = """
import os, sys, time
from ssl_jax import run_lock
from ssl_jax.errors import exit_on_error
workdir, barrier = sys.argv[1], sys.argv[2]
if barrier != "-":  # a race: widen the window between reading the lock and writing it
    judge = run_lock._judge
    run_lock._judge = lambda *args: time.sleep(0.05) or judge(*args)
    open(os.path.join(barrier, f"ready.{os.getpid()}"), "w").close()
    while not os.path.exists(os.path.join(barrier, "go")):
        time.sleep(0.001)
with exit_on_error():
    lock = run_lock.acquire(workdir)
print("held", flush=True)
while barrier != "-" and not os.path.exists(os.path.join(barrier, "stop")):
    time.sleep(0.01)
if barrier == "-":
    time.sleep(600)  # held until killed
lock.release()
"""


def child(workdir, barrier="-"):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(workdir), str(barrier)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(params=["local", "ram"])
def workdir(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    path = f"ram://run_lock_test/{uuid.uuid4().hex}"
    tf.io.gfile.makedirs(path)
    return path


def lock_path(workdir):
    return str(workdir).rstrip("/") + "/" + run_lock.LOCK_FILE


def read_lock(workdir) -> dict:
    return json.loads(run_lock._store(str(workdir)).read())  # as a launch reads it


def write_holder(workdir, **fields) -> run_lock.Holder:
    """A lock as another launch would have left it: another host with a fresh heartbeat unless
    `fields` say otherwise."""
    now = time.time()
    values = dict(
        token=uuid.uuid4().hex,
        host="other-host",
        host_id="other-host|boot|pid:[1]",
        pid=4242,
        pid_start=None,
        since=now - 3600,
        heartbeat=now,
        heartbeat_s=30.0,
    )
    holder = run_lock.Holder(**{**values, **fields})
    # Written as the launches write it (tf.io.gfile "w" appends on ram:// in TF 2.21).
    with run_lock._store(str(workdir)).locked() as f:
        f.write(json.dumps(dataclasses.asdict(holder)))
    return holder


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch):
    monkeypatch.setattr(run_lock, "SETTLE_S", 0.2)  # ram:// claims land in microseconds


def test_refused_while_held_on_this_host_naming_the_holder(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        write_holder(
            tmp_path,
            host="this-host",
            host_id=run_lock._host_id(),
            pid=sleeper.pid,
            pid_start=run_lock._process_start(sleeper.pid),
            heartbeat=time.time() - 3600,
        )
        with pytest.raises(UserError) as e:  # a live pid here: refused, however old its heartbeat
            run_lock.acquire(str(tmp_path))
    finally:
        sleeper.kill()
        sleeper.wait()
    message = str(e.value)
    assert "\n" not in message
    for fragment in (
        f"pid {sleeper.pid} on host this-host",
        "since ",
        "(1 h 00 min ago)",
        "last heartbeat 1 h 00 min ago",
        f"kill {sleeper.pid}",
        "--workdir",
    ):
        assert fragment in message, message
    assert "stale" not in message  # on this host only the process's death frees it


def test_release_then_acquire(workdir):
    lock = run_lock.acquire(workdir)
    assert lock.held and read_lock(workdir)["token"] == lock.token
    assert f"pid {os.getpid()}" in run_lock.describe(workdir)
    with pytest.raises(UserError, match="already locked by this process"):
        run_lock.acquire(workdir)
    lock.release()
    assert read_lock(workdir)["released"] is not None and run_lock.describe(workdir) is None
    with run_lock.hold(workdir) as again:
        assert again.token != lock.token and read_lock(workdir)["token"] == again.token
    assert read_lock(workdir)["released"] is not None


def test_lock_of_a_dead_or_reused_pid_on_this_host_is_taken_over(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_holder(tmp_path, host_id=run_lock._host_id(), pid=gone.pid)  # fresh heartbeat
    with run_lock.hold(str(tmp_path)) as lock:
        assert read_lock(tmp_path)["token"] == lock.token
    sleeper = subprocess.Popen(["sleep", "60"])
    try:  # the pid lives, but started later than the holder did: a reused pid
        start = run_lock._process_start(sleeper.pid)
        write_holder(tmp_path, host_id=run_lock._host_id(), pid=sleeper.pid, pid_start=start - 1)
        with run_lock.hold(str(tmp_path)) as lock:
            assert read_lock(tmp_path)["token"] == lock.token
    finally:
        sleeper.kill()
        sleeper.wait()


def test_lock_from_another_host_is_taken_over_once_its_heartbeat_is_stale(workdir):
    now = time.time()
    write_holder(workdir, heartbeat=now - 10)
    with pytest.raises(UserError) as e:
        run_lock.acquire(workdir, stale_after_s=300)
    assert "pid 4242 on host other-host" in str(e.value)
    assert "counts as stale in 4 min 50 s (300 s without a heartbeat" in str(e.value)
    assert f"--config.{run_lock.CONFIG_KEY}=0" in str(e.value)
    # A holder that beats every 200 s is stale only after 3 missed beats (600 s), not 300 s.
    write_holder(workdir, heartbeat=now - 400, heartbeat_s=200.0)
    with pytest.raises(UserError, match="stale in 3 min 20 s"):
        run_lock.acquire(workdir, stale_after_s=300)
    write_holder(workdir, heartbeat=now - 400)
    with run_lock.hold(workdir, stale_after_s=300) as lock:
        assert read_lock(workdir)["token"] == lock.token
    write_holder(workdir, heartbeat=now)  # fresh, but the user says it is gone
    with run_lock.hold(workdir, stale_after_s=0) as lock:
        assert read_lock(workdir)["token"] == lock.token


def test_heartbeat_advances_while_held_and_stops_at_release(workdir):
    lock = run_lock.acquire(workdir, heartbeat_s=0.05)
    first = read_lock(workdir)["heartbeat"]
    time.sleep(0.5)
    beat = read_lock(workdir)["heartbeat"]
    assert 0.1 < beat - first < 1.0, beat - first  # beats every 0.05 s: several by now
    lock.release()
    assert not lock._thread.is_alive()
    last = read_lock(workdir)["heartbeat"]
    time.sleep(0.2)
    assert read_lock(workdir)["heartbeat"] == last


def test_a_run_whose_lock_was_taken_over_notices_within_a_heartbeat(workdir):
    lock = run_lock.acquire(workdir, heartbeat_s=0.05)
    lock.check()
    other = write_holder(workdir, host="newer-host")  # what a takeover leaves
    for _ in range(20):  # a beat in flight on ram:// can still overwrite it once: write it again
        time.sleep(0.1)
        if lock.lost:
            break
        other = write_holder(workdir, host="newer-host")
    assert lock.lost and not lock._thread.is_alive()
    with pytest.raises(UserError, match="taken over by another run .pid 4242 on host newer-host"):
        lock.check()
    lock.release()  # leaves the new holder's lock alone
    assert read_lock(workdir)["token"] == other.token and read_lock(workdir)["released"] is None


def test_non_lead_processes_touch_nothing(workdir):
    lock = run_lock.acquire(workdir, is_lead=False)
    assert not lock.held and lock.token is None
    lock.check()
    lock.release()
    assert not tf.io.gfile.exists(lock_path(workdir))


def test_racing_takeovers_of_a_stale_lock_exactly_one_wins_across_processes(tmp_path):
    for rep in range(3):
        barrier = tmp_path / f"barrier{rep}"
        barrier.mkdir()
        write_holder(tmp_path, heartbeat=time.time() - 3600)  # stale: every launch may take it
        launches = [child(tmp_path, barrier) for _ in range(4)]
        while len(list(barrier.glob("ready.*"))) < len(launches):
            time.sleep(0.01)
        (barrier / "go").touch()  # all four acquire within a millisecond or so
        winners = [p for p in launches if p.stdout.readline() == "held\n"]
        assert len(winners) == 1, rep
        (barrier / "stop").touch()
        for p in launches:
            p.wait(timeout=60)
        losers = [p for p in launches if p not in winners]
        assert [p.returncode for p in losers] == [2, 2, 2] and winners[0].returncode == 0
        for p in losers:
            assert f"in use by another run: pid {winners[0].pid}" in p.stderr.read()
        for p in launches:
            p.stdout.close()
            p.stderr.close()


def launch_in_thread(workdir, barrier, outcomes):
    barrier.wait()
    try:
        outcomes.append(run_lock.acquire(workdir))
    except UserError as e:
        outcomes.append(str(e))


def test_racing_takeovers_on_an_object_store_exactly_one_wins(monkeypatch):
    judge = run_lock._judge  # widen the window between reading the lock and writing it
    monkeypatch.setattr(run_lock, "_judge", lambda *args: time.sleep(0.05) or judge(*args))
    for rep in range(3):
        workdir = f"ram://run_lock_race/{uuid.uuid4().hex}"
        tf.io.gfile.makedirs(workdir)
        write_holder(workdir, heartbeat=time.time() - 3600)
        barrier, outcomes = threading.Barrier(4), []
        args = (workdir, barrier, outcomes)
        threads = [threading.Thread(target=launch_in_thread, args=args) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [o for o in outcomes if isinstance(o, run_lock.RunLock)]
        assert len(winners) == 1 and read_lock(workdir)["token"] == winners[0].token, rep
        assert all("already locked by this process" in o for o in outcomes if isinstance(o, str))
        winners[0].release()


def test_second_launch_is_a_one_line_error_and_kill_9_frees_the_workdir(tmp_path):
    holder = child(tmp_path)
    assert holder.stdout.readline() == "held\n"
    second = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), "-"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2 and second.stdout == ""
    assert len(second.stderr.splitlines()) == 1, second.stderr
    assert second.stderr.startswith(
        f"error: workdir {str(tmp_path)!r} is in use by another run: pid {holder.pid} on host "
    )
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    holder.stderr.close()
    third = child(tmp_path)  # kill -9 and rerun: the dead pid's lock is taken over
    assert third.stdout.readline() == "held\n"
    third.kill()
    _, stderr = third.communicate()
    assert f"pid {holder.pid} is gone from this host" in stderr


# Two JAX processes of one run (CPU collectives), as tests/test_parallel.py's multi-host runs.
TWO_HOSTS = """
import os, sys
import jax
from ssl_jax import parallel, run_lock
from ssl_jax.errors import UserError
parallel.initialize_distributed()
held, free = sys.argv[1], sys.argv[2]
try:
    run_lock.acquire_on_all_hosts(held)
    print("held", flush=True)
except UserError as e:
    print("refused:", e, flush=True)
lock = run_lock.acquire_on_all_hosts(free)
print("locked" if lock.held else "stand-in", flush=True)
lock.release()
"""


def test_the_hosts_of_one_run_share_one_lock_and_all_fail_with_process_0(tmp_path):
    held, free = tmp_path / "held", tmp_path / "free"
    held.mkdir()
    free.mkdir()
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
        JAX_NUM_PROCESSES="2",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
    )
    with run_lock.hold(str(held)):  # this test process is the other run
        hosts = [
            subprocess.Popen(
                [sys.executable, "-c", TWO_HOSTS, str(held), str(free)],
                env=dict(env, JAX_PROCESS_ID=str(i)),
                cwd=REPO,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for i in range(2)
        ]
        outputs = [h.communicate(timeout=120) for h in hosts]
    for h, (_, err) in zip(hosts, outputs, strict=True):
        assert h.returncode == 0, err
    # Only our lines: gloo says hello on stdout.
    out0, out1 = ([x for x in out.splitlines() if not x.startswith("[Gloo]")] for out, _ in outputs)
    refused = f"refused: workdir {str(held)!r} is in use by another run: pid {os.getpid()} on host "
    assert out0[0].startswith(refused) and out1[0].startswith(refused), (out0, out1)
    assert "see process 0's error" in out1[0]
    assert out0[1:] == ["locked"] and out1[1:] == ["stand-in"]
    assert read_lock(free)["pid"] == hosts[0].pid and read_lock(free)["released"] is not None
