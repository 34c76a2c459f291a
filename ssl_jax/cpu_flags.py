"""XLA flags for faster CPU training, set before jax starts its backend.

Why: jaxlib 0.10.2 on CPU sends every convolution to YNNPACK (`__ynn_fusion` calls of type
`individual_convolution` in the compiled HLO), which we measured 1.2-1.6x slower than XLA's own
Eigen convolutions for ResNet training steps. `--xla_cpu_experimental_ynn_fusion_type=` (empty
value: no YNN fusions at all) restores Eigen, and also avoids a known YNN fusion crash/hang in
jaxlib 0.10.2/0.11 (jax-ml/jax#39257). `FLAG` holds the form used; the narrower
`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` only moves convolutions back; it
is faster on ResNet-50 only through YNN's reduce fusions, which it leaves on and which are the
ones that crash (README "Benchmarks": without them it measured the same as the empty form).

Risk: the flag is experimental, and XLA aborts at start-up on an unknown flag or value, so it is
added only for jaxlib versions where it was measured (`MEASURED_JAXLIB`), only when jax will run
on the CPU, and only if the user's XLA_FLAGS do not set it already. It is appended to the user's
XLA_FLAGS, which are otherwise left as they are.

Turn it off with the environment variable SSL_JAX_CPU_XLA_FLAGS=off (or 0, false, no).

`apply()` runs on `import ssl_jax`. XLA reads XLA_FLAGS once, when jax creates its first backend;
if that already happened (jax was used before ssl_jax was imported), it does nothing.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping

FLAG = "--xla_cpu_experimental_ynn_fusion_type="
FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
MEASURED_JAXLIB = ("0.10.2",)
SWITCH = "SSL_JAX_CPU_XLA_FLAGS"
# Name prefixes of installed distributions that make jax pick an accelerator when JAX_PLATFORMS is
# unset: jax-cuda12-plugin, jax-cuda12-pjrt, jax-cuda13-*, jax-rocm*, jax-metal, libtpu(-nightly).
ACCELERATOR_DISTRIBUTIONS = ("jax-cuda", "jax-rocm", "jax-metal", "libtpu")
INFO_SUFFIXES = (".dist-info", ".egg-info")

_log = logging.getLogger(__name__)


def _installed_distributions() -> list[str]:
    """Metadata folder names on sys.path, lower case with "-" for "_" (jax-cuda12-plugin-0.10.2.
    dist-info): a directory listing, as reading every distribution's METADATA costs ~50 ms."""
    names = []
    for entry in sys.path:
        try:
            files = os.listdir(entry or ".")
        except OSError:  # a zip file, a missing folder
            continue
        names += [f.lower().replace("_", "-") for f in files if f.endswith(INFO_SUFFIXES)]
    return names


def platform_for(
    environ: Mapping[str, str],
    distributions: Callable[[], Iterable[str]] = _installed_distributions,
) -> str:
    """The platform jax will use: the first entry of JAX_PLATFORMS (or legacy JAX_PLATFORM_NAME);
    when neither is set, "cpu" unless an accelerator package is installed ("accelerator")."""
    requested = environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME") or ""
    first = requested.split(",")[0].strip().lower()
    if first:
        return first
    if any(name.startswith(ACCELERATOR_DISTRIBUTIONS) for name in distributions()):
        return "accelerator"
    return "cpu"


def xla_flags_for(environ: Mapping[str, str], *, jaxlib_version: str, platform: str) -> str | None:
    """The new XLA_FLAGS value, or None to leave XLA_FLAGS alone."""
    if environ.get(SWITCH, "").strip().lower() in ("off", "0", "false", "no"):
        return None
    if platform != "cpu" or jaxlib_version not in MEASURED_JAXLIB:
        return None
    flags = environ.get("XLA_FLAGS", "")
    if FLAG_NAME in flags:  # the user's own choice (or an earlier apply) wins
        return None
    return f"{flags} {FLAG}" if flags.strip() else FLAG


def _backend_initialized() -> bool:
    xla_bridge = sys.modules.get("jax._src.xla_bridge")  # imported only if jax was
    try:
        return xla_bridge is not None and bool(xla_bridge._backends)
    except Exception:  # a jax without this private detail: assume not started
        return False


def apply(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Sets environ["XLA_FLAGS"] per `xla_flags_for`; returns the new value or None."""
    if _backend_initialized():
        _log.info("jax backend already initialised; %s not applied", FLAG)
        return None
    try:
        jaxlib_version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None
    if jaxlib_version not in MEASURED_JAXLIB:  # before the slower scan of installed packages
        return None
    flags = xla_flags_for(environ, jaxlib_version=jaxlib_version, platform=platform_for(environ))
    if flags is not None:
        environ["XLA_FLAGS"] = flags
    return flags
