"""ssl_jax.cpu_flags: which XLA_FLAGS value results from which environment."""

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from ssl_jax import cpu_flags

FLAG = "--xla_cpu_experimental_ynn_fusion_type="
USER = "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/x"
MEASURED = "0.10.2"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flags_for(environ, jaxlib_version=MEASURED, platform="cpu"):
    return cpu_flags.xla_flags_for(environ, jaxlib_version=jaxlib_version, platform=platform)


def test_constants():
    assert cpu_flags.FLAG == FLAG
    assert cpu_flags.MEASURED_JAXLIB == ("0.10.2",)


def test_user_flags_kept_in_order_and_flag_appended():
    assert flags_for({"XLA_FLAGS": USER}) == USER + " " + FLAG
    assert flags_for({}) == FLAG
    assert flags_for({"XLA_FLAGS": "  "}) == FLAG


@pytest.mark.parametrize("platform", ["tpu", "cuda", "gpu", "rocm", "accelerator"])
def test_absent_off_cpu(platform):
    assert flags_for({"XLA_FLAGS": USER}, platform=platform) is None


@pytest.mark.parametrize("version", ["0.11.0", "0.9.0", "0.10.1", "0.10.2.dev20260101"])
def test_absent_for_unmeasured_jaxlib(version):
    assert flags_for({"XLA_FLAGS": USER}, jaxlib_version=version) is None


@pytest.mark.parametrize("value", ["off", "OFF", "0", "false", "no", " Off "])
def test_switch_off(value):
    assert flags_for({"XLA_FLAGS": USER, "SSL_JAX_CPU_XLA_FLAGS": value}) is None


def test_switch_other_values_keep_it_on():
    assert flags_for({"SSL_JAX_CPU_XLA_FLAGS": "on"}) == FLAG
    assert flags_for({"SSL_JAX_CPU_XLA_FLAGS": ""}) == FLAG


@pytest.mark.parametrize(
    "user",
    [
        "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
        "--xla_dump_to=/tmp/x --xla_cpu_experimental_ynn_fusion_type=default",
        FLAG,
    ],
)
def test_users_own_ynn_flag_wins(user):
    assert flags_for({"XLA_FLAGS": user}) is None


def test_platform_from_environment():
    none = lambda: []  # noqa: E731
    cuda = lambda: ["numpy", "jax-cuda12-plugin", "jax-cuda12-pjrt"]  # noqa: E731
    assert cpu_flags.platform_for({"JAX_PLATFORMS": "cpu"}, cuda) == "cpu"
    assert cpu_flags.platform_for({"JAX_PLATFORMS": "cpu,cuda"}, none) == "cpu"
    assert cpu_flags.platform_for({"JAX_PLATFORMS": "tpu"}, none) == "tpu"
    assert cpu_flags.platform_for({"JAX_PLATFORMS": "cuda,cpu"}, none) == "cuda"
    assert cpu_flags.platform_for({"JAX_PLATFORM_NAME": "cpu"}, cuda) == "cpu"
    assert cpu_flags.platform_for({"JAX_PLATFORM_NAME": "gpu"}, none) == "gpu"
    assert cpu_flags.platform_for({"JAX_PLATFORMS": "", "JAX_PLATFORM_NAME": ""}, none) == "cpu"
    assert cpu_flags.platform_for({}, none) == "cpu"
    for installed in (
        cuda,
        lambda: ["libtpu"],
        lambda: ["jax-rocm7-plugin"],
        lambda: ["jax-metal"],
    ):
        assert cpu_flags.platform_for({}, installed) == "accelerator"


def test_accelerator_package_found_on_sys_path(tmp_path, monkeypatch):
    (tmp_path / "numpy-2.4.6.dist-info").mkdir()
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(tmp_path / "missing"), "x.zip"])
    assert cpu_flags.platform_for({}) == "cpu"
    (tmp_path / "jax_cuda12_plugin-0.10.2.dist-info").mkdir()
    assert cpu_flags.platform_for({}) == "accelerator"
    assert cpu_flags.platform_for({"JAX_PLATFORMS": "cpu"}) == "cpu"


def test_apply_twice_adds_the_flag_once(monkeypatch):
    # conftest initialised jax's backend; pretend it did not, to reach the decision.
    monkeypatch.setattr(cpu_flags, "_backend_initialized", lambda: False)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: MEASURED)
    environ = {"XLA_FLAGS": USER, "JAX_PLATFORMS": "cpu"}
    assert cpu_flags.apply(environ) == USER + " " + FLAG
    assert cpu_flags.apply(environ) is None
    assert environ["XLA_FLAGS"] == USER + " " + FLAG
    tpu = {"XLA_FLAGS": USER, "JAX_PLATFORMS": "tpu"}
    assert cpu_flags.apply(tpu) is None and tpu["XLA_FLAGS"] == USER


def test_apply_skips_once_a_backend_is_initialised():
    environ = {"XLA_FLAGS": USER, "JAX_PLATFORMS": "cpu"}  # conftest already used jax's devices
    assert cpu_flags._backend_initialized()
    assert cpu_flags.apply(environ) is None and environ["XLA_FLAGS"] == USER


PROGRAM = """
import json, os
import ssl_jax
import jax, jax.numpy as jnp
x, w = jnp.ones((1, 8, 8, 32)), jnp.ones((3, 3, 32, 32))
conv = lambda x: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
hlo = jax.jit(conv).lower(x).compile().as_text()
print(json.dumps({"flags": os.environ["XLA_FLAGS"], "devices": jax.device_count(),
                  "ynn": "__ynn_fusion" in hlo}))
"""


def run_fresh(**extra):
    # No compilation cache: the HLO text must come from a real compile in this process.
    env = {k: v for k, v in os.environ.items()
           if k not in ("SSL_JAX_CPU_XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}  # fmt: skip
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu", **extra)
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fresh_process_convolutions_leave_ynnpack():
    if importlib.metadata.version("jaxlib") not in cpu_flags.MEASURED_JAXLIB:
        pytest.skip("the flag is only applied on measured jaxlib versions")
    on = run_fresh()
    assert on["flags"] == "--xla_force_host_platform_device_count=2 " + FLAG
    assert on["devices"] == 2  # the user's own flag still works
    assert not on["ynn"]
    off = run_fresh(SSL_JAX_CPU_XLA_FLAGS="off")
    assert off["flags"] == "--xla_force_host_platform_device_count=2"
    assert off["devices"] == 2
    assert off["ynn"]  # jaxlib's default: this convolution is a YNNPACK fusion


# jax-ml/jax#40412: on jaxlib 0.10.2 this rank-7 multiply-reduce runs as a YNN fusion whose
# kernel segfaults on x86-64 (on a worker thread: often after the result printed). jaxlib's
# default and `-individual_convolution` alone crash here; the flag ssl_jax sets must not.
CRASHES_YNN_REDUCE = """
import ssl_jax
import jax, jax.numpy as jnp
u = jax.random.normal(jax.random.PRNGKey(0), (3, 1, 2, 2, 8, 8, 8), dtype=jnp.float32)
v = jax.random.normal(jax.random.PRNGKey(1), (3, 1, 2, 2, 8, 8, 8), dtype=jnp.float32)
print(float(jax.jit(lambda a, b: jnp.sum(a * b, axis=3))(u, v).sum()))
"""


def test_the_flag_avoids_the_known_ynn_reduce_crash():
    if importlib.metadata.version("jaxlib") not in cpu_flags.MEASURED_JAXLIB:
        pytest.skip("the flag is only applied on measured jaxlib versions")
    unset = ("SSL_JAX_CPU_XLA_FLAGS", "XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", CRASHES_YNN_REDUCE], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
