"""launch/tpu_vm.sh and launch/gpu_slurm.sh, without a cloud or a cluster.

--dry-run prints each command the script would run, one a line. The tests check those commands for
a one-host (v4-8) and a four-host (v4-32) TPU slice and for SLURM, feed them back through bash to
fake programs that record their argv (so an override with spaces and quotes must arrive intact,
on every worker), and run the preemption loops for real against a fake gcloud / srun that exit
with scripted statuses. No network; each script run takes milliseconds.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU_VM = REPO / "launch" / "tpu_vm.sh"
GPU_SLURM = REPO / "launch" / "gpu_slurm.sh"
PREEMPTED = 75  # ssl_jax.errors.PREEMPTED_EXIT_CODE
NOTES = "--config.notes=a b 'c'"  # an override that naive quoting breaks
WORKDIR = "/mnt/shared dir/run 1"

# One fake for every program the scripts call, picked by the name it is called as. Each call is
# appended to $FAKE_LOG as JSON. gcloud keeps the TPU's state in $FAKE_STATE (no file: no TPU);
# a training run (an ssh whose command starts ssl_jax.main) exits with the next status of
# $FAKE_CODES, where [status, "PREEMPTED"] also marks the TPU preempted. With FAKE_WORKERS=N,
# gcloud ssh runs its command with bash, as every one of N workers would, in the fake $FAKE_HOME.
FAKE = r"""
import json, os, subprocess, sys

name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
record = {"prog": name, "argv": args}
if name == "python":
    record.update(cwd=os.getcwd(), worker=os.environ.get("TPU_WORKER_ID"),
                  distributed=os.environ.get("SSL_JAX_DISTRIBUTED"))
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(record) + "\n")


def next_code():
    path = os.environ["FAKE_CODES"]
    with open(path) as f:
        codes = json.load(f)
    code = codes.pop(0)
    with open(path, "w") as f:
        json.dump(codes, f)
    if isinstance(code, list):
        code, state = code
        with open(os.environ["FAKE_STATE"], "w") as f:
            f.write(state)
    return code


state_file = os.environ.get("FAKE_STATE", "")
if name in ("pkill", "pgrep"):
    sys.exit(1)  # no leftover trainer
if name == "srun":
    sys.exit(next_code())
if name == "gcloud":
    verb = args[3]
    if verb == "describe":
        if not os.path.exists(state_file):
            sys.exit("ERROR: NOT_FOUND")
        print(open(state_file).read())
    elif verb == "create":
        open(state_file, "w").write("READY")
    elif verb == "delete":
        os.remove(state_file)
    elif verb == "ssh":
        command = next(a for a in args if a.startswith("--command="))[len("--command="):]
        if "FAKE_WORKERS" in os.environ:
            statuses = [
                subprocess.run(["bash", "-c", command], cwd=os.environ["FAKE_HOME"],
                               env={**os.environ, "HOME": os.environ["FAKE_HOME"],
                                    "TPU_WORKER_ID": str(w)}).returncode
                for w in range(int(os.environ["FAKE_WORKERS"]))
            ]
            sys.exit(next((s for s in statuses if s), 0))
        if "ssl_jax.main" in command:
            sys.exit(next_code())
"""


@pytest.fixture
def fake(tmp_path):
    """A bin folder of fake programs, and the environment that puts it first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "fake.py"
    program.write_text(f"#!{sys.executable} -IS\n{FAKE}")
    program.chmod(0o755)
    for name in ("gcloud", "python", "pkill", "pgrep", "srun", "sbatch", "scontrol", "tar"):
        (bin_dir / name).symlink_to(program)
    home = tmp_path / "home"
    (home / "ssl_jax").mkdir(parents=True)
    (home / "ssl_jax_venv" / "bin").mkdir(parents=True)
    (home / "ssl_jax_venv" / "bin" / "activate").write_text("# the fake python is on PATH\n")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "FAKE_LOG": str(tmp_path / "calls.jsonl"),
        "FAKE_STATE": str(tmp_path / "tpu_state"),
        "FAKE_CODES": str(tmp_path / "codes.json"),
        "FAKE_HOME": str(home),
    }
    return env


def calls(env, prog=None):
    path = Path(env["FAKE_LOG"])
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in records if prog is None or r["prog"] == prog]


def run_script(script, args, env, **settings):
    """The script's exit status, stdout lines and stderr, with settings as environment variables."""
    result = subprocess.run(
        ["bash", str(script), *args],
        env={**env, **{k: str(v) for k, v in settings.items()}},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout.splitlines(), result.stderr


def through_bash(line, env, **extra):
    """Run one printed command line with bash, as a user pasting it would."""
    subprocess.run(["bash", "-c", line], env={**env, **extra}, check=True, timeout=60)


def option(words, name):
    values = [w.split("=", 1)[1] for w in words if w.startswith(name + "=")]
    assert len(values) == 1, (name, words)
    return values[0]


# ---------------------------------------------------------------- TPU VM: dry run


@pytest.mark.parametrize("accelerator, workers", [("v4-8", 1), ("v4-32", 4)])
def test_tpu_dry_run_commands(fake, accelerator, workers):
    status, lines, _ = run_script(
        TPU_VM,
        ["--dry-run", "configs/simclr.py", NOTES],
        fake,
        TPU="my-tpu",
        ZONE="us-central2-b",
        ACCELERATOR_TYPE=accelerator,
        SPOT=1,
        WORKDIR=WORKDIR,
        DATA_DIR="/mnt/tfds",
    )
    assert status == 0
    assert calls(fake) == []  # a dry run runs nothing
    commands = [shlex.split(line) for line in lines]
    assert [c[0] for c in commands] == ["tar"] + ["gcloud"] * 6
    gcloud = [c for c in commands if c[0] == "gcloud"]
    assert [c[:5] for c in gcloud] == [
        ["gcloud", "compute", "tpus", "tpu-vm", verb]
        for verb in ("describe", "create", "scp", "ssh", "ssh", "delete")
    ]
    describe, create, scp, set_up, train, delete = gcloud
    for c in gcloud:  # the same TPU and zone everywhere
        assert option(c, "--zone") == "us-central2-b"
        tpu_name = c[6].split(":")[0] if c is scp else c[5]  # scp ARCHIVE my-tpu:FILE
        assert tpu_name == "my-tpu"
    tar = commands[0]  # this checkout, without git's and the virtualenv's files
    assert tar[1:3] == ["-czf", scp[5]] and tar[-3:] == ["-C", str(REPO), "."]
    assert {"--exclude=.git", "--exclude=.venv"} <= set(tar)
    assert option(create, "--accelerator-type") == accelerator
    assert option(create, "--version") == "tpu-ubuntu2204-base"
    assert "--spot" in create and "--preemptible" not in create
    for c in (scp, set_up, train):
        assert option(c, "--worker") == "all"
    setup_command = option(set_up, "--command")
    assert "jax[tpu]" in setup_command and "-c ~/ssl_jax/constraints.txt" in setup_command
    assert delete[-1] == "--quiet" and lines[-1] == shlex.join(delete)
    for remote in (setup_command, option(train, "--command")):  # valid shell on the workers
        subprocess.run(["bash", "-n", "-c", remote], check=True)

    # The training command, pasted into bash: every worker runs the same argv.
    train_line = lines[commands.index(train)]
    through_bash(train_line, fake, FAKE_WORKERS=str(workers))
    runs = calls(fake, "python")
    assert [r["worker"] for r in runs] == [str(w) for w in range(workers)]
    expected = ["-m", "ssl_jax.main", "--config=configs/simclr.py", f"--workdir={WORKDIR}",
                "--config.data_dir=/mnt/tfds", NOTES]  # fmt: skip
    for r in runs:
        assert r["argv"] == expected
        assert r["distributed"] == "1" and r["cwd"] == str(Path(fake["FAKE_HOME"]) / "ssl_jax")


def test_tpu_dry_run_from_a_git_url_and_kept(fake):
    _, lines, _ = run_script(
        TPU_VM,
        ["--dry-run", "configs/simclr.py:cifar10", "--workdir=/mnt/shared/c10"],
        fake,
        REPO_URL="https://example.com/me/ssl_jax.git",
        REPO_REF="v1",
        PREEMPTIBLE=1,
        KEEP_TPU=1,
        PROJECT="my-project",
    )
    commands = [shlex.split(line) for line in lines]
    verbs = [c[4] for c in commands]
    assert verbs == ["describe", "create", "ssh", "ssh"]  # no tar, no scp, no delete
    assert all(option(c, "--project") == "my-project" for c in commands)
    assert "--preemptible" in commands[1] and option(commands[1], "--accelerator-type") == "v4-8"
    setup_command = option(commands[2], "--command")
    assert "git clone -q https://example.com/me/ssl_jax.git ~/ssl_jax" in setup_command
    assert "checkout -q v1" in setup_command
    assert "--workdir=/mnt/shared/c10 " in option(commands[3], "--command") + " "


@pytest.mark.parametrize(
    "accelerator, runtime",
    [
        ("v4-8", "tpu-ubuntu2204-base"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5p-8", "v2-alpha-tpuv5"),
        ("v6e-8", "v2-alpha-tpuv6e"),
    ],
)
def test_tpu_runtime_version_follows_the_accelerator(fake, accelerator, runtime):
    _, lines, _ = run_script(
        TPU_VM, ["--dry-run", "configs/simclr.py"], fake, ACCELERATOR_TYPE=accelerator, WORKDIR="/w"
    )
    create = next(shlex.split(line) for line in lines if " create " in line)
    assert option(create, "--version") == runtime
    _, lines, _ = run_script(
        TPU_VM, ["--dry-run", "configs/simclr.py"], fake, RUNTIME_VERSION="mine", WORKDIR="/w"
    )
    assert "--version=mine" in next(line for line in lines if " create " in line)


@pytest.mark.parametrize(
    "args, settings, message",
    [
        (["configs/simclr.py"], {}, "set WORKDIR"),
        (["configs/simclr.py"], {"WORKDIR": "runs/x"}, "must be an absolute path"),
        (["configs/simclr.py"], {"WORKDIR": "/w", "SPOT": 1, "PREEMPTIBLE": 1}, "not both"),
        ([], {"WORKDIR": "/w"}, "usage: launch/tpu_vm.sh"),
    ],
)
def test_tpu_bad_settings_are_one_line(fake, args, settings, message):
    status, lines, err = run_script(TPU_VM, ["--dry-run", *args], fake, **settings)
    assert status == 2 and lines == []
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_scripts_rerun_on_the_trainers_preempted_status():
    from ssl_jax.errors import PREEMPTED_EXIT_CODE

    assert PREEMPTED == PREEMPTED_EXIT_CODE
    for script in (TPU_VM, GPU_SLURM):
        assert re.search(rf"^PREEMPTED={PREEMPTED_EXIT_CODE} ", script.read_text(), re.M)


def test_tpu_leftover_pattern_spares_the_remote_shell():
    """The pkill pattern matches a trainer, never the shell that runs the command holding it."""
    script = TPU_VM.read_text()
    pattern = re.search(r"""leftover="'(.*)'"$""", script, re.M).group(1)
    assert re.search(pattern, "/home/me/ssl_jax_venv/bin/python -m ssl_jax.main --config=x")
    assert re.search(pattern, "python -m ssl_jax.main --workdir=/w")
    remote_shell = "bash -c cd ~/ssl_jax && ... SSL_JAX_DISTRIBUTED=1 exec python -m ssl_jax.main"
    assert not re.search(pattern, remote_shell)


# ---------------------------------------------------------------- TPU VM: the re-run loop


def gcloud_verb(argv):
    """describe, create, delete, ...; an ssh is "set_up" or "train" after what it runs."""
    command = next((a for a in argv if a.startswith("--command=")), None)
    if command is None:
        return argv[3]
    return "train" if "ssl_jax.main" in command else "set_up"


def tpu_loop(fake, codes, state=None, **settings):
    """Run tpu_vm.sh for real against the fake gcloud; returns (status, gcloud verbs)."""
    Path(fake["FAKE_CODES"]).write_text(json.dumps(codes))
    if state:
        Path(fake["FAKE_STATE"]).write_text(state)
    settings = {"WORKDIR": "/w", "REPO_URL": "https://example.com/ssl_jax.git", **settings}
    status, _, err = run_script(TPU_VM, ["configs/simclr.py", NOTES], fake, **settings)
    verbs = [gcloud_verb(c["argv"]) for c in calls(fake, "gcloud")]
    # Every re-run is the same command; on a recreated TPU it also takes over the lock that the
    # deleted hosts' run may have left in the workdir.
    trains = {a.replace(" --config.workdir_lock_stale_after_s=0", "")
              for c in calls(fake, "gcloud") for a in c["argv"] if "ssl_jax.main" in a}  # fmt: skip
    assert len(trains) <= 1, "every re-run is the same command"
    assert json.loads(Path(fake["FAKE_CODES"]).read_text()) == [], err  # every run happened
    return status, verbs, err


def test_tpu_reruns_after_exit_75(fake):
    status, verbs, err = tpu_loop(fake, [PREEMPTED, 0])
    assert status == 0
    assert verbs == ["describe", "create", "set_up", "train", "describe", "train", "delete"]
    assert "preempted" in err and "re-run 1 of at most 20" in err
    runs = [a for c in calls(fake, "gcloud") for a in c["argv"] if "ssl_jax.main" in a]
    assert not any("workdir_lock_stale_after_s" in r for r in runs)  # same hosts: same lock rules


@pytest.mark.parametrize("code", [0, 1])
def test_tpu_success_or_failure_runs_once(fake, code):
    status, verbs, err = tpu_loop(fake, [code])
    assert status == code
    rerun_check = ["describe"] if code else []  # a failure: is the TPU still there?
    assert verbs == ["describe", "create", "set_up", "train", *rerun_check, "delete"]
    assert ("not re-running" in err) == bool(code)


def test_tpu_recreated_after_it_is_preempted(fake):
    status, verbs, _ = tpu_loop(fake, [[255, "PREEMPTED"], 0], SPOT=1)
    assert status == 0
    assert verbs == ["describe", "create", "set_up", "train", "describe",
                     "describe", "delete", "create", "set_up", "train", "delete"]  # fmt: skip
    assert sum("--spot" in c["argv"] for c in calls(fake, "gcloud")) == 2  # spot both times
    runs = [a for c in calls(fake, "gcloud") for a in c["argv"] if "ssl_jax.main" in a]
    # Only the run on the recreated hosts takes over the workdir's lock at once.
    assert ["workdir_lock_stale_after_s=0" in r for r in runs] == [False, True]


def test_tpu_reruns_after_a_lost_connection_on_a_ready_tpu(fake):
    status, verbs, err = tpu_loop(fake, [255, 0], state="READY", KEEP_TPU=1)
    assert status == 0
    # An existing TPU is used (and set up once); KEEP_TPU=1: not deleted.
    assert verbs == ["describe", "set_up", "train", "describe", "describe", "train"]
    assert "ssh connection was lost" in err and "KEEP_TPU=1" in err


def test_tpu_gives_up_after_max_restarts(fake):
    status, verbs, err = tpu_loop(fake, [PREEMPTED] * 3, MAX_RESTARTS=2)
    assert status == PREEMPTED and verbs.count("train") == 3 and verbs[-1] == "delete"
    assert "MAX_RESTARTS=2" in err


# ---------------------------------------------------------------- SLURM


def test_slurm_dry_run_submits_one_task_per_gpu(fake):
    status, lines, _ = run_script(
        GPU_SLURM,
        ["--dry-run", "configs/simclr.py", NOTES],
        fake,
        NODES=4,
        GPUS_PER_NODE=8,
        CPUS_PER_TASK=12,
        PARTITION="gpu",
        WORKDIR=WORKDIR,
    )
    assert status == 0 and calls(fake) == []
    sbatch_line, comment, srun_line = lines
    assert comment.startswith("#")
    sbatch = shlex.split(sbatch_line)
    assert sbatch[0] == "sbatch"
    assert option(sbatch, "--nodes") == "4" and option(sbatch, "--ntasks-per-node") == "8"
    assert option(sbatch, "--gpus-per-node") == "8" and option(sbatch, "--cpus-per-task") == "12"
    assert option(sbatch, "--partition") == "gpu" and "--requeue" in sbatch
    assert option(sbatch, "--signal") == "TERM@180" and option(sbatch, "--chdir") == str(REPO)

    # Pasted into bash, sbatch gets this script and the arguments intact (the job re-reads them).
    through_bash(sbatch_line, fake)
    assert calls(fake, "sbatch")[0]["argv"][-3:] == [str(GPU_SLURM), "configs/simclr.py", NOTES]
    Path(fake["FAKE_CODES"]).write_text("[0]")
    through_bash(srun_line, fake)
    assert calls(fake, "srun")[0]["argv"] == [
        "--ntasks-per-node=8", "--cpus-per-task=12", "python", "-m", "ssl_jax.main",
        "--config=configs/simclr.py", f"--workdir={WORKDIR}", NOTES,
    ]  # fmt: skip


def test_slurm_dry_run_inside_a_job_prints_srun(fake):
    Path(fake["FAKE_CODES"]).write_text("[0]")
    status, lines, _ = run_script(
        GPU_SLURM,
        ["--dry-run", "configs/simclr.py", NOTES],
        fake,
        SLURM_JOB_ID=42,
        SLURM_GPUS_ON_NODE=4,
        WORKDIR=WORKDIR,
        DATA_DIR="/data/tfds",
    )
    assert status == 0 and len(lines) == 1 and calls(fake) == []
    through_bash(lines[0], fake)
    argv = calls(fake, "srun")[0]["argv"]
    assert argv == ["--ntasks-per-node=4", "python", "-m", "ssl_jax.main",
                    "--config=configs/simclr.py", f"--workdir={WORKDIR}",
                    "--config.data_dir=/data/tfds", NOTES]  # fmt: skip


@pytest.mark.parametrize(
    "code, restart_count, requeued",
    [(PREEMPTED, 0, True), (PREEMPTED, 20, False), (0, 0, False), (1, 0, False)],
)
def test_slurm_requeues_only_after_exit_75(fake, code, restart_count, requeued):
    Path(fake["FAKE_CODES"]).write_text(json.dumps([code]))
    status, _, err = run_script(
        GPU_SLURM,
        ["configs/simclr.py", "--workdir=/shared/w"],
        fake,
        SLURM_JOB_ID=42,
        SLURM_RESTART_COUNT=restart_count,
    )
    assert status == code
    assert len(calls(fake, "srun")) == 1
    expected = [{"prog": "scontrol", "argv": ["requeue", "42"]}] if requeued else []
    assert calls(fake, "scontrol") == expected, err
