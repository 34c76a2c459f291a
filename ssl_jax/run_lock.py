"""One run per workdir: a lock file that names its holder; taken over once the holder is gone.

Two launches on one workdir would both train, log every step twice into one metrics.jsonl and
write the same checkpoints. So a run takes `WORKDIR/run.lock` right after the workdir is
prepared, before any work:

    with run_lock.hold(workdir, is_lead=jax.process_index() == 0, stale_after_s=300):
        ...  # the whole run; lock.check() at checkpoint saves

The lock is one small JSON file: the holder's host, pid, start time, an owner token (a uuid per
acquisition) and a heartbeat time that a daemon thread rewrites every `heartbeat_s` seconds while
the run lives. A second launch reads it and fails with a one-line UserError naming the holder.

A lock left by a killed or preempted run is taken over, so kill -9 and rerun still resumes:
  - on the same host (same hostname, boot and pid namespace) when the holder's pid is gone, or
    belongs to a newer process (its start time, from /proc, differs: the pid was reused);
    while the process lives its lock is never taken, however old its heartbeat (it may be
    stopped with ^Z and resumed);
  - from another host (a shared filesystem) when its heartbeat is older than `stale_after_s`
    (at least 3 of the holder's heartbeat intervals). The default, 300 s, is 10 heartbeats of
    30 s: a late heartbeat (the GIL held by a long C++ call, an object-store write retried with
    backoff, a VM live migration, clock skew between NTP-synced hosts) never looks like death,
    and 300 s is of the order of the minutes a preempted TPU VM takes to be recreated, so a
    relaunch seldom waits long. stale_after_s=0 takes over any lock whose holder is not provably
    alive on this host (for a launcher that knows the old VMs are deleted).
Ages compare the holder's clock (the time it wrote) with the reader's: hosts must agree to well
within stale_after_s, which NTP gives.

Guarantees, per filesystem (`run.lock` is read and written through ssl_jax.fileio, or os where
local):
  - local and NFS paths: exclusive. Every read-decide-write of the lock runs under flock() on
    run.lock (NFS: byte-range locks, coherent across clients), which the kernel releases when a
    process dies: of two launches that both see a stale lock, exactly one takes it. The file is
    never deleted (a released lock says so), because a flock on a deleted file excludes no one.
    Where flock is unsupported (some FUSE or Lustre mounts) it falls back to the next case, with
    a warning. A FUSE mount of an object store (gcsfuse) only excludes launches on one host:
    give the gs:// path instead.
  - gs:// and other object stores (neither tf.io.gfile nor fsspec has an exclusive create;
    GCS's if-generation-match is not exposed): best effort. A launch writes its claim, waits
    `SETTLE_S`, reads it back and holds the lock only if its own token is still there; two
    launches whose claims land within that time of each other are told apart (the last writer
    wins, the other fails naming it).
    Racers slower than that could both start; then every heartbeat re-reads the lock, and the run
    whose token was replaced marks itself lost within one heartbeat: `check()` raises.

Multi-host: the hosts of one run share one lock. Only process 0 (`is_lead=True`) reads, writes
and heartbeats it; the other processes get a stand-in that holds nothing. They must still fail
when process 0 fails, so the caller shares process 0's outcome with a collective (e.g.
multihost_utils.broadcast_one_to_all) and raises on every host; `describe(workdir)` names the
holder for their message (the workdir is on a filesystem all hosts share).
"""

import atexit
import contextlib
import dataclasses
import errno
import fcntl
import functools
import json
import os
import pathlib
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator

from absl import logging

from ssl_jax import fileio
from ssl_jax.errors import UserError

LOCK_FILE = "run.lock"
CONFIG_KEY = "workdir_lock_stale_after_s"  # the config key that sets stale_after_s
DEFAULT_STALE_AFTER_S = 300.0
DEFAULT_HEARTBEAT_S = 30.0
SETTLE_S = 1.0  # object stores: how long a claim must survive before it counts
FLOCK_TIMEOUT_S = 60.0  # a critical section takes milliseconds; longer means a hung filesystem

# Tokens of the locks this process holds: a holder on this host with our pid is this process,
# and alive only if its token is here (else it is an earlier acquisition never released).
_HELD: dict[str, "RunLock"] = {}
_HELD_GUARD = threading.Lock()


# ==================================================================== who holds the lock


@dataclasses.dataclass
class Holder:
    """The content of run.lock (JSON); times are seconds since the epoch on the holder's clock."""

    token: str
    host: str
    host_id: str  # hostname|boot id|pid namespace: where a pid means this process
    pid: int
    pid_start: int | None  # the process's start time in clock ticks since boot (/proc), if known
    since: float
    heartbeat: float
    heartbeat_s: float
    command: str = ""
    released: float | None = None  # set when the holder released it: the lock is free

    def describe(self, now: float) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.since))
        return (
            f"pid {self.pid} on host {self.host}, since {started} ({_duration(now - self.since)} "
            f"ago), last heartbeat {_duration(now - self.heartbeat)} ago"
        )


def _parse(text: str) -> Holder | None:
    """The holder in run.lock's text; None for an empty file. ValueError when unreadable."""
    if not text.strip():
        return None
    fields = json.loads(text)
    names = {f.name for f in dataclasses.fields(Holder)}
    return Holder(**{k: v for k, v in fields.items() if k in names})


@dataclasses.dataclass
class _Verdict:
    alive: bool
    why: str  # why it is (not) alive, for the log
    stale_in: float | None = None  # seconds until a live-looking remote holder counts as stale
    threshold: float = 0.0  # the heartbeat age at which it does


def _judge(holder: Holder, stale_after_s: float, now: float) -> _Verdict:
    """Whether `holder` still runs, as far as this process can tell."""
    if holder.released is not None:
        return _Verdict(False, "released")
    if holder.host_id == _host_id():
        if holder.pid == os.getpid():
            with _HELD_GUARD:
                live = holder.token in _HELD
            return _Verdict(live, "held by this process" if live else "left by this process")
        if _pid_alive(holder.pid, holder.pid_start):
            return _Verdict(True, "its process is alive on this host")
        return _Verdict(False, f"pid {holder.pid} is gone from this host")
    if stale_after_s <= 0:
        return _Verdict(False, "stale_after_s=0 takes over any lock from another host")
    threshold = max(stale_after_s, 3 * holder.heartbeat_s)
    age = now - holder.heartbeat
    if age > threshold:
        return _Verdict(False, f"no heartbeat for {_duration(age)} (> {threshold:g} s)")
    return _Verdict(True, "fresh heartbeat", stale_in=threshold - age, threshold=threshold)


def _in_use_message(workdir: str, holder: Holder, verdict: _Verdict, now: float) -> str:
    """One line: who holds the workdir and what to do."""
    if verdict.why == "held by this process":
        return (
            f"workdir {workdir!r} is already locked by this process (a run in it has not "
            "finished); finish or release that run first, or pass another --workdir"
        )
    text = (
        f"workdir {workdir!r} is in use by another run: {holder.describe(now)}. Wait for it to "
        f"finish, stop it (kill {holder.pid} on host {holder.host}) or pass another --workdir"
    )
    if verdict.stale_in is not None:  # another host: only its heartbeat says it lives
        text += (
            f"; if that run is surely gone, its lock counts as stale in "
            f"{_duration(verdict.stale_in)} ({verdict.threshold:g} s without a heartbeat, "
            f"--config.{CONFIG_KEY}), or at once with --config.{CONFIG_KEY}=0"
        )
    return text


# ==================================================================== this host and its processes


@functools.cache
def _host_id() -> str:
    """hostname|boot id|pid namespace: equal only where a pid names the same process.

    A hostname alone is not enough: a recreated VM keeps its name (new boot id), and containers
    with the host's network share its name but not its pids (another pid namespace).
    """

    def linux_only(read):
        try:
            return read()
        except OSError:  # not Linux: the hostname is what there is
            return ""

    boot = linux_only(lambda: pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    return "|".join(
        [socket.gethostname(), boot, linux_only(lambda: os.readlink("/proc/self/ns/pid"))]
    )


def _process_start(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot, /proc/PID/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its end.
    try:
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _pid_alive(pid: int, pid_start: int | None) -> bool:
    """Whether the process that wrote the lock still runs on this host."""
    if pid <= 0:  # os.kill(0 or -1, ...) would address process groups, not one process
        return False
    try:
        os.kill(pid, 0)  # signal 0: only the existence check
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    start = _process_start(pid)
    return pid_start is None or start is None or start == pid_start  # else: a reused pid


# ==================================================================== storage


class _LocalStore:
    """run.lock on a local or NFS path: every read-decide-write runs under flock()."""

    def __init__(self, path: str):
        self.path = path
        self.exclusive = True

    @contextlib.contextmanager
    def locked(self) -> Iterator["_LocalFile"]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if self.exclusive:
                self._flock(fd)
            yield _LocalFile(self.path, fd)
        finally:
            os.close(fd)  # releases the flock

    def _flock(self, fd: int) -> None:
        deadline = time.monotonic() + FLOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(
                        f"{self.path} stayed locked by another process for {FLOCK_TIMEOUT_S:g} "
                        "s (a hung filesystem?); check the workdir's filesystem and rerun"
                    ) from None
                time.sleep(0.01)
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                logging.warning(
                    "flock() is not supported on %s (%s): the workdir lock is best effort there",
                    self.path,
                    e.strerror,
                )
                self.exclusive = False
                return

    def read(self) -> str:
        """The text, outside a critical section (under a shared flock: never half written)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return ""
        try:
            with contextlib.suppress(OSError):  # no flock here: as in _flock, read anyway
                fcntl.flock(fd, fcntl.LOCK_SH)
            return _LocalFile(self.path, fd).read()
        finally:
            os.close(fd)


@dataclasses.dataclass
class _LocalFile:
    """run.lock opened by one critical section (one per thread: no shared file offset)."""

    path: str
    fd: int

    def read(self) -> str:
        chunks, offset = [], 0
        while chunk := os.pread(self.fd, 65536, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks).decode()

    def write(self, text: str) -> None:
        data = text.encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)  # on the server (NFS) before the flock is released


class _RemoteStore:
    """run.lock on gs:// or another non-local filesystem (ssl_jax.fileio): no mutual exclusion
    (see top)."""

    exclusive = False

    def __init__(self, path: str):
        self.path = path

    @contextlib.contextmanager
    def locked(self) -> Iterator["_RemoteStore"]:
        yield self

    def read(self) -> str:
        with _as_os_error():
            return fileio.read_bytes(self.path).decode() if fileio.exists(self.path) else ""

    def write(self, text: str) -> None:
        # One whole write (fileio.write_bytes): readers see the old text or the new, never a part.
        with _as_os_error():
            fileio.write_bytes(self.path, text.encode())


@contextlib.contextmanager
def _as_os_error():
    """Each filesystem's own errors (tf.errors, gcsfs's HttpError), as OSError: acquire() words
    OSErrors for the user."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        raise OSError(str(e)) from None


def _store(workdir: str) -> _LocalStore | _RemoteStore:
    if workdir.startswith("file://"):
        workdir = workdir[len("file://") :]
    if "://" in workdir:
        return _RemoteStore(fileio.join(workdir, LOCK_FILE))
    return _LocalStore(os.path.join(workdir, LOCK_FILE))


def _read_holder(store) -> Holder | None:
    """The holder. Text cut short can only be a write in progress where flock() is missing: read
    again a few times; text that stays unreadable frees the lock (it names no one to wait for)."""
    for _ in range(5):
        text = store.read()
        try:
            return _parse(text)
        except (ValueError, TypeError):
            time.sleep(0.1)
    logging.warning("%s is unreadable (%r); it counts as free", store.path, text[:80])
    return None


# ==================================================================== the lock


class RunLock:
    """The lock of one run on a workdir; `held` is False on non-lead processes (a stand-in)."""

    def __init__(self, workdir: str, store=None, holder: Holder | None = None):
        self.workdir, self._store, self.holder = workdir, store, holder
        self.held = holder is not None
        self._lost: str | None = None  # the message, once another run took the lock over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str | None:
        return self.holder.token if self.holder else None

    @property
    def lost(self) -> bool:
        return self._lost is not None

    def check(self) -> None:
        """Raise when another run took the lock over (this one stalled past stale_after_s)."""
        if self._lost is not None:
            raise UserError(self._lost)

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(
            target=self._heartbeat_loop, name="ssl_jax-run-lock-heartbeat", daemon=True
        )
        self._thread.start()

    def _heartbeat_loop(self) -> None:
        failing_since = None
        while not self._stop.wait(self.holder.heartbeat_s):
            try:
                if not self._beat():
                    return
                failing_since = None
            except Exception as e:  # noqa: BLE001  (a flaky filesystem must not end the run)
                failing_since = failing_since or time.time()
                logging.warning(
                    "Heartbeat of %s failed for %.0f s (%s); another launch may take the lock "
                    "over once it is stale",
                    self._store.path,
                    time.time() - failing_since,
                    e,
                )

    def _beat(self) -> bool:
        """Rewrite the heartbeat time; False (and the lock lost) if another run holds it now."""
        with self._store.locked() as f:
            if self._stop.is_set():  # released meanwhile: leave the released record alone
                return False
            current = _read_holder(f)
            if current is not None and current.token != self.token:
                self._lost = (
                    f"workdir {self.workdir!r} was taken over by another run "
                    f"({current.describe(time.time())}) while this run's heartbeat was stale; "
                    "this run stops so that one run writes the workdir"
                )
                logging.error(self._lost)
                return False
            self.holder.heartbeat = time.time()
            f.write(json.dumps(dataclasses.asdict(self.holder)))
        return True

    def release(self) -> None:
        """Stop the heartbeat and mark the lock free (kept as a record, see top). Idempotent."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=FLOCK_TIMEOUT_S)
        with _HELD_GUARD:
            _HELD.pop(self.token, None)
        atexit.unregister(self.release)
        try:
            with self._store.locked() as f:
                current = _read_holder(f)
                if current is not None and current.token == self.token:
                    self.holder.released = time.time()
                    f.write(json.dumps(dataclasses.asdict(self.holder)))
        except OSError as e:  # the run's work is done; a stale lock is taken over later
            logging.warning("Could not release %s (%s)", self._store.path, e)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(
    workdir: str,
    *,
    is_lead: bool = True,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    heartbeat_s: float | None = None,
) -> RunLock:
    """Take the workdir's lock for this run, or raise a one-line UserError naming its holder.

    Args:
      workdir: the run's workdir (exists already: workdir.prepare); local, NFS, gs:// or any
        other ssl_jax.fileio path.
      is_lead: True on process 0 of the run. Other processes touch nothing and get a stand-in
        (`held` False); their caller must learn process 0's outcome (see the module docstring).
      stale_after_s: a lock from another host with no heartbeat for this long is taken over;
        0 takes over any lock whose holder is not provably alive on this host.
      heartbeat_s: the heartbeat interval; default stale_after_s / 10 within 1..30 s.
    Returns:
      The held lock; call `release()` at the end (or use `hold`), `check()` at checkpoints.
    """
    if not is_lead:
        return RunLock(workdir)
    if stale_after_s < 0:
        raise UserError(f"{CONFIG_KEY}={stale_after_s} must be >= 0 (0: take over now)")
    if heartbeat_s is None:
        heartbeat_s = min(DEFAULT_HEARTBEAT_S, max(1.0, stale_after_s / 10))
    try:
        return _acquire(workdir, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s)
    except OSError as e:
        raise UserError(
            f"cannot lock workdir {workdir!r} ({e.strerror or e}); pass a writable --workdir"
        ) from None


def _acquire(workdir: str, *, stale_after_s: float, heartbeat_s: float) -> RunLock:
    store = _store(workdir)
    now = time.time()
    ours = Holder(
        token=uuid.uuid4().hex,
        host=socket.gethostname(),
        host_id=_host_id(),
        pid=os.getpid(),
        pid_start=_process_start(os.getpid()),
        since=now,
        heartbeat=now,
        heartbeat_s=heartbeat_s,
        command=" ".join(sys.argv)[:300],
    )
    lock = RunLock(workdir, store, ours)
    for _ in range(3):  # more than one round only on object stores, after a lost race
        with store.locked() as f:
            current, now = _read_holder(f), time.time()
            if current is not None:
                verdict = _judge(current, stale_after_s, now)
                if verdict.alive:
                    raise UserError(_in_use_message(workdir, current, verdict, now))
                if current.released is None:
                    logging.warning(
                        "Taking over the lock of %s from %s: %s",
                        workdir,
                        current.describe(now),
                        verdict.why,
                    )
            with _HELD_GUARD:  # before the write: a racing thread of this process sees it alive
                _HELD[ours.token] = lock
            try:
                ours.since = ours.heartbeat = time.time()
                f.write(json.dumps(dataclasses.asdict(ours)))
                if store.exclusive:
                    break
                time.sleep(SETTLE_S)  # object store: our claim counts if still there after this
                current = _read_holder(f)
                if current is not None and current.token == ours.token:
                    break
            except BaseException:
                _HELD.pop(ours.token, None)
                raise
        with _HELD_GUARD:
            _HELD.pop(ours.token, None)
    else:
        raise UserError(
            f"could not take the lock of workdir {workdir!r}: other launches kept claiming it; "
            "make sure one run uses this workdir and rerun"
        )
    atexit.register(lock.release)  # an exception that ends the process still frees the lock
    lock._start_heartbeat()
    return lock


def acquire_on_all_hosts(workdir: str, *, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> RunLock:
    """acquire() for every process of a run: process 0 takes the lock, and when it cannot, every
    process raises (one collective, so no host trains alone). Call it on all processes."""
    import jax  # here: the lock itself needs no JAX
    import numpy as np
    from jax.experimental import multihost_utils

    lock, error = None, None
    try:
        lock = acquire(workdir, is_lead=jax.process_index() == 0, stale_after_s=stale_after_s)
    except Exception as e:  # noqa: BLE001  (re-raised below, after the other hosts know)
        error = e
    if jax.process_count() > 1:
        failed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
        if failed and error is None:  # process 0 failed: name what it saw, from the shared file
            holder = describe(workdir)
            error = UserError(
                f"workdir {workdir!r} is in use by another run: {holder}; see process 0's error"
                if holder
                else f"process 0 could not lock workdir {workdir!r}; see its error"
            )
    if error is not None:
        raise error
    return lock


@contextlib.contextmanager
def hold(workdir: str, **kwargs) -> Iterator[RunLock]:
    """`with hold(workdir, is_lead=..., stale_after_s=...) as lock:` acquire ... release."""
    lock = acquire(workdir, **kwargs)
    try:
        yield lock
    finally:
        lock.release()


def describe(workdir: str) -> str | None:
    """Who holds the workdir's lock, in words (for non-lead hosts' messages); None when free."""
    store = _store(workdir)
    try:
        holder = _parse(store.read())
    except (ValueError, TypeError):
        return None
    if holder is None or holder.released is not None:
        return None
    return holder.describe(time.time())


def _duration(seconds: float) -> str:
    """4 s, 3 min 12 s, 2 h 05 min, 3 d 4 h."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"
