"""User paths on any filesystem: local folders, gs:// and the other URLs etils.epath or
tf.io.gfile handle.

Every file the library reads or writes under a user's path (workdir, export, pretrained, subset
and scan-cache files) goes through this module. It dispatches to etils.epath's backends, the
layer orbax and JAX's compilation cache use, so the library's files and the checkpoints take the
same route:
  - local paths: os;
  - gs://, s3://, az://, hf://: as epath serves them, tf.io.gfile while TensorFlow is installed
    and EPATH_USE_TF is not "false" (the test suite sets it, to reach a GCS emulator through
    gcsfs), fsspec otherwise;
  - any other URL (hdfs://, TF's in-memory ram://): tf.io.gfile.

Object stores (gs:// and the like) differ from a disk: an object is replaced whole and
atomically when its upload completes (so a half-written object is never visible), there is no
append, and renaming is a copy plus a delete (gcsfs retries a move API first). So a rewrite
there is one whole-object write; elsewhere it is tmp + rename. An `AppendLog` off local disk
rewrites its file with every line on each flush.
"""

import io
import os
import shutil
import uuid

from etils.epath import backend as epath_backend

_EPATH_SCHEMES = ("gs", "s3", "az", "hf")  # the URLs epath routes itself


def _scheme(path) -> str | None:
    path = os.fspath(path)
    return path.split("://", 1)[0] if "://" in path else None


def is_local(path) -> bool:
    return _scheme(path) is None


def is_object_store(path) -> bool:
    return _scheme(path) in _EPATH_SCHEMES


def _fs(path) -> epath_backend.Backend:
    scheme = _scheme(path)
    if scheme is None:
        return epath_backend.os_backend
    if scheme in _EPATH_SCHEMES:
        # epath's own rule (gpath._is_tf_installed; its backend choice is private), so these
        # files and orbax's take the same route. TensorFlow is a dependency: it is installed.
        use_tf = os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0")
        return epath_backend.tf_backend if use_tf else epath_backend.fsspec_backend
    return epath_backend.tf_backend


def absolute(path) -> str:
    """The path a user meant: `~` and relative paths resolved locally, URLs kept as given."""
    path = os.fspath(path)
    return os.path.abspath(os.path.expanduser(path)) if is_local(path) else path.rstrip("/")


def join(path, *names) -> str:
    """`os.path.join` that keeps a URL's `//` (epath.Path would turn gs://b into /gs/b)."""
    return "/".join([os.fspath(path).rstrip("/"), *names]) if names else os.fspath(path)


def parent(path) -> str:
    path = os.fspath(path).rstrip("/")
    return path.rsplit("/", 1)[0] if "/" in path else "."


def basename(path) -> str:
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def exists(path) -> bool:
    return _fs(path).exists(path)


def is_dir(path) -> bool:
    return _fs(path).isdir(path)


def listdir(path) -> list[str]:
    return sorted(_fs(path).listdir(path))


def makedirs(path) -> None:
    _fs(path).makedirs(path, exist_ok=True)


def read_bytes(path) -> bytes:
    with _fs(path).open(path, "rb") as f:
        return f.read()


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path, data: bytes) -> None:
    """Replace the file whole: a kill mid-write leaves the old file or none, never half of one."""
    path, fs = os.fspath(path), _fs(path)
    if is_object_store(path):
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"  # unique: threads of one process may race
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.replace(tmp, path)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def remove_tree(path) -> None:
    """Remove a file or a folder with everything in it; nothing there is fine."""
    fs = _fs(path)
    if fs.isdir(path):
        fs.rmtree(path)
    elif fs.exists(path):
        fs.remove(path)


def move_tree(src, dst) -> None:
    """Move a file or folder (its parent folder made first); off local disk every object is
    copied, then deleted, since object stores cannot rename."""
    src, dst = os.fspath(src), os.fspath(dst)
    makedirs(parent(dst))
    if is_local(src):
        shutil.move(src, dst)
        return
    fs = _fs(src)
    if fs.isdir(src):
        for name in fs.listdir(src):
            move_tree(join(src, name.rstrip("/")), join(dst, name.rstrip("/")))
        remove_tree(src)
    else:
        fs.copy(src, dst, overwrite=True)
        fs.remove(src)


class AppendLog:
    """A file that only grows (metrics.jsonl, TensorBoard events), kept across restarts.

    Local: an ordinary file opened for appending. Elsewhere: the earlier content is read once,
    and each `flush` replaces the file with everything written so far. Rewriting costs the
    file's size per flush, as tf.io.gfile's own append on gs:// does; callers that flush often
    keep such files small.
    """

    def __init__(self, path, *, binary: bool = False):
        self.path, self._binary = os.fspath(path), binary
        self._local = is_local(self.path)
        if self._local:
            self._file = open(self.path, "ab" if binary else "a")
        else:
            self._buffer = io.BytesIO(read_bytes(self.path) if exists(self.path) else b"")
            self._buffer.seek(0, io.SEEK_END)
            self._dirty = False
        self.closed = False

    @property
    def size(self) -> int:
        return self._file.tell() if self._local else self._buffer.tell()

    def write(self, data) -> None:
        if self._local:
            self._file.write(data)
        else:
            self._buffer.write(data if self._binary else data.encode("utf-8"))
            self._dirty = True

    def flush(self) -> None:
        if self._local:
            self._file.flush()
        elif self._dirty:
            write_bytes(self.path, self._buffer.getvalue())
            self._dirty = False

    def close(self) -> None:
        if not self.closed:
            self.flush()
            if self._local:
                self._file.close()
            self.closed = True
