"""Device mesh, multi-host start-up, and host batches -> global sharded arrays.

One mesh over every device of every host with a single `data` axis. The train step is written for
the global batch; jit partitions it. Each host feeds only its own rows of the global batch.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ssl_jax.errors import UserError

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """Join the other hosts when launched as one of several processes.

    Explicit: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (e.g. a CPU
    multi-process run). Detected by jax: a Cloud TPU VM slice or a SLURM job, when the launch
    script sets SSL_JAX_DISTRIBUTED=1 or SLURM runs more than one task. A single process needs
    nothing, so the same command works from a laptop to a pod.
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":
            # CPU processes need a collectives backend to reduce across each other.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif os.environ.get("SSL_JAX_DISTRIBUTED") == "1" or int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, the rest whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    devices = mesh.devices.size
    if global_batch % devices:
        raise UserError(
            f"batch_size={global_batch} is not divisible by the {devices} devices; "
            f"use a multiple of {devices}, "
            f"e.g. --config.batch_size={_next_multiple(global_batch, devices)}"
        )
    if global_batch % jax.process_count():
        raise UserError(
            f"batch_size={global_batch} is not divisible by {jax.process_count()} hosts"
        )


def _next_multiple(n: int, k: int) -> int:
    return max(k, (n + k - 1) // k * k)


def to_global(host_batch, mesh: Mesh):
    """This host's rows of every leaf (numpy) -> global jax.Arrays sharded along `data`."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch
    )
