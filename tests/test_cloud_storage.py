"""The whole command line with its workdirs on gs://: pretraining (checkpoints, resume, the
export), an evaluation reading the encoder from gs://, and the results table. (The pictures
are written by fileio.write_bytes, which tests/test_fileio.py covers; a visualize run here was
left out to keep CI under 20 minutes.)

Google Cloud Storage is played by gcp-storage-emulator, an in-memory GCS JSON API on localhost:
no network, no credentials. The runs reach it as a user's runs reach GCS, through the same
libraries: orbax's arrays through TensorStore's GCS driver (TENSORSTORE_GCS_HTTP_URL points it
at the emulator), and every other file (ssl_jax.fileio, orbax's metadata, JAX's compilation
cache) through etils.epath. TensorFlow's own GCS client cannot be pointed at an emulator, so
these runs set EPATH_USE_TF=false, which routes epath's gs:// through gcsfs (fsspec) instead of
tf.io.gfile; a user's run on GCS takes tf.io.gfile, with the same object-store rules (see
ssl_jax/fileio.py). Image data stays local here: tf.data reads it through TensorFlow.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

gcs_emulator = pytest.importorskip("gcp_storage_emulator.server")
gcs_objects = pytest.importorskip("gcp_storage_emulator.handlers.objects")
# gcsfs's plain client: the package's default (ExtendedGcsFileSystem) first asks a gRPC API the
# emulator lacks whether the bucket is zonal, and waits 60 s for each answer.
gcsfs_core = pytest.importorskip("gcsfs.core")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "ssl-jax-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _with_generation_headers(download):
    """GCS names an object's generation in the headers of every download; TensorStore reads it
    there (OCDBT's manifest is read-modify-written by generation) and fails with "Malformed
    StorageGeneration" without it. The emulator leaves it out; this adds it."""

    def serve(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # not found: the download answered 404 already
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

    return serve


@pytest.fixture(scope="module")
def gcs():
    """(environment for the runs, a gcsfs client to look into the bucket)."""
    port = _free_port()
    download = gcs_objects.download
    gcs_objects.download = _with_generation_headers(download)
    server = gcs_emulator.create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://localhost:{port}"
    env = dict(os.environ)
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        EPATH_USE_TF="false",
        STORAGE_EMULATOR_HOST=url,  # gcsfs
        FSSPEC_GCS_TOKEN="anon",
        # gcsfs's zonal-bucket probe asks a gRPC API the emulator lacks (a 60 s timeout each)
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
        TENSORSTORE_GCS_HTTP_URL=url,
        GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",  # TensorStore: no credential lookup
    )
    fs = gcsfs_core.GCSFileSystem(endpoint_url=url, token="anon")
    yield env, fs
    server.stop()
    gcs_objects.download = download


def run(env, module, *args):
    cmd = [sys.executable, "-m", module, *args]
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def pretrain(env, workdir, *overrides):
    config = os.path.join(REPO, "configs", "simclr.py")
    # runlocal: 4 steps, a checkpoint every 2
    return run(
        env, "ssl_jax.main", f"--config={config}:runlocal", f"--workdir={workdir}", *overrides
    )


def metrics(fs, path) -> list[dict]:
    return [json.loads(line) for line in fs.cat(path).decode().splitlines()]


@pytest.fixture(scope="module")
def gcs_run(gcs):
    """A 4-step pretraining run on gs://, then the same command again: it resumes at step 4."""
    env, fs = gcs
    workdir = f"gs://{BUCKET}/pretrain"
    pretrain(env, workdir)
    first_results = json.loads(fs.cat(f"{BUCKET}/pretrain/results.json"))
    second = pretrain(env, workdir)
    return env, fs, workdir, first_results, second


def test_pretraining_writes_the_workdir_contract_on_gcs(gcs_run):
    env, fs, workdir, *_ = gcs_run
    root = workdir.removeprefix("gs://")
    names = set(fs.ls(root, detail=False))
    for name in ("config.json", "metrics.jsonl", "results.json", "run.lock", "tensorboard",
                 "checkpoints", "export", "compilation_cache"):  # fmt: skip
        assert f"{root}/{name}" in names, (name, sorted(names))
    assert not any(".tmp" in n for n in names), names
    steps = sorted(int(p.rsplit("/", 1)[1]) for p in fs.ls(f"{root}/checkpoints", detail=False)
                   if p.rsplit("/", 1)[1].isdigit())  # fmt: skip
    assert steps == [2, 4]
    export = set(fs.ls(f"{root}/export", detail=False))
    for name in ("encoder.json", "variables", "torchvision.safetensors"):
        assert f"{root}/export/{name}" in export, (name, sorted(export))
    assert json.loads(fs.cat(f"{root}/export/encoder.json"))["step"] == 4
    losses = [r["loss"] for r in metrics(fs, f"{root}/metrics.jsonl") if "loss" in r]
    assert len(losses) == 4 and np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    # The lock was released at exit, so the second run could start.
    assert json.loads(fs.cat(f"{root}/run.lock")).get("released")


def test_a_rerun_on_gcs_resumes_from_its_checkpoint_exactly(gcs_run):
    _, fs, workdir, first_results, second = gcs_run
    root = workdir.removeprefix("gs://")
    records = metrics(fs, f"{root}/metrics.jsonl")
    # metrics.jsonl kept the first run's lines (no append on GCS: ssl_jax rewrites the object).
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert {"event": "resume", "step": 4} in records
    assert "resuming at step 4" in second.stdout, second.stdout
    # The second run evaluated the state it restored from gs://: the same numbers as the first.
    results = json.loads(fs.cat(f"{root}/results.json"))
    assert results["step"] == 4
    for key, value in first_results.items():
        if key.endswith(("_top1", "_top5")):
            assert results[key] == pytest.approx(value, abs=1e-6), key
    # The TensorBoard files of both starts are there and readable.
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = fs.ls(f"{root}/tensorboard", detail=False)
    assert len(files) == 2
    tags = set()
    for name in files:
        local = f"/tmp/{os.path.basename(name)}"
        fs.get(name, local)
        tags |= {v.tag for e in EventFileLoader(local).Load() for v in e.summary.value}
        os.remove(local)
    assert {"loss", "lr"} <= tags


def test_evaluation_and_report_read_and_write_gcs(gcs_run):
    env, fs, workdir, *_ = gcs_run
    evaluation = f"gs://{BUCKET}/eval"
    config = os.path.join(REPO, "configs", "linear_eval.py")
    out = run(env, "ssl_jax.main", f"--config={config}:runlocal", f"--workdir={evaluation}",
              f"--config.pretrained={workdir}", "--config.protocols=('knn',)",
              "--config.knn.k=5").stdout  # fmt: skip
    results = json.loads(fs.cat(f"{BUCKET}/eval/results.json"))
    assert results["pretrained"] == workdir and 0 <= results["knn_top1"] <= 1, out
    assert fs.exists(f"{BUCKET}/eval/features/train.npz")
    table = run(env, "ssl_jax.report", workdir, evaluation).stdout
    assert "| pretrain |" in table and "| eval |" in table, table


def test_a_workdir_in_a_missing_bucket_is_a_one_line_error(gcs):
    env, _ = gcs
    config = os.path.join(REPO, "configs", "simclr.py")
    cmd = [sys.executable, "-m", "ssl_jax.main", f"--config={config}:runlocal",
           "--workdir=gs://no-such-bucket/run"]  # fmt: skip
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "gs://no-such-bucket/run" in errors[0] and "pass a writable --workdir" in errors[0]
