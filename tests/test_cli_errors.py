"""Bad input: one line on stderr, a non-zero exit, no traceback, and nothing saved is lost."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "simclr.py")


def run_cli(*args, config=f"{CONFIG}:runlocal"):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    cmd = [sys.executable, "-m", "ssl_jax.main", f"--config={config}", *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_unknown_config_key(tmp_path):
    result = run_cli(f"--workdir={tmp_path}", "--config.temprature=0.2")
    assert_one_line_error(result, "temprature")


def test_unknown_dataset(tmp_path):
    result = run_cli(f"--workdir={tmp_path}", "--config.dataset=cifar11")
    assert_one_line_error(result, "cifar11", "imagefolder:")


def test_tfds_dataset_not_prepared_does_not_download(tmp_path):
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    result = run_cli(
        f"--workdir={tmp_path / 'run'}", "--config.dataset=cifar10", f"--config.data_dir={data_dir}"
    )
    assert_one_line_error(result, "cifar10", "tfds build")
    assert not any(data_dir.rglob("*.tfrecord*"))


def test_empty_image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    result = run_cli(f"--workdir={tmp_path / 'run'}", f"--config.dataset=imagefolder:{folder}")
    assert_one_line_error(result, str(folder))


def test_batch_not_divisible_by_devices(tmp_path):
    result = run_cli(f"--workdir={tmp_path}", "--config.batch_size=36")
    assert_one_line_error(result, "batch_size=36", "8 devices")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; the file case covers it")
def test_unwritable_workdir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_cli(f"--workdir={locked / 'run'}")
    assert_one_line_error(result, "workdir")


def test_workdir_that_is_a_file_keeps_the_file(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("precious")
    result = run_cli(f"--workdir={blocker / 'run'}")
    assert_one_line_error(result, "workdir")
    assert blocker.read_text() == "precious"


def test_missing_workdir_flag():
    result = run_cli()
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "workdir" in result.stderr


def test_non_finite_loss_is_one_line_and_exit_status_3(tmp_path):
    workdir = str(tmp_path)
    result = run_cli(f"--workdir={workdir}", "--config.total_steps=6", "--config.base_lr=1e30")
    assert result.returncode == 3
    assert "error: loss became nan at step" in result.stderr.lower()
    assert "Traceback" not in result.stderr


# Method settings that cannot run: caught by Method.validate in set_up, before the data is read,
# the workdir is created or a model is built; the line says which value and what would work.
BAD_METHOD_SETTINGS = {
    "mocov2_queue_not_a_multiple_of_the_batch": (
        "mocov2.py",
        "--config.queue_size=100",
        ["queue_size=100", "32 keys", "--config.queue_size=96"],
    ),
    "byol_ema_rate_above_one": (
        "byol.py",
        "--config.ema.tau_base=1.5",
        ["ema.tau_base=1.5", "[0, 1]"],
    ),
    "barlow_twins_negative_lambd": ("barlow_twins.py", "--config.lambd=-1", ["lambd=-1", ">= 0"]),
    "vicreg_negative_std_coeff": ("vicreg.py", "--config.std_coeff=-1", ["std_coeff=-1", ">= 0"]),
    "simclr_zero_temperature": ("simclr.py", "--config.temperature=0", ["temperature=0", "> 0"]),
    "unknown_method": (
        "simclr.py",
        "--config.method=nonsense",
        ["'nonsense'", "simclr", "mocov2", "mocov3", "byol", "simsiam", "barlow_twins", "vicreg"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_METHOD_SETTINGS))
def test_bad_method_setting_fails_before_any_work(tmp_path, case):
    config_file, override, fragments = BAD_METHOD_SETTINGS[case]
    workdir = tmp_path / "run"
    config = f"{os.path.join(REPO, 'configs', config_file)}:runlocal"
    result = run_cli(f"--workdir={workdir}", override, config=config)
    assert_one_line_error(result, *fragments)
    assert result.returncode == 2  # a user error, as for the other bad settings
    assert not (workdir / "config.json").exists() and not (workdir / "checkpoints").exists()
