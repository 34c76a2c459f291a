"""ssl_jax: self-supervised visual pretraining in JAX/Flax."""

import setuptools

setuptools.setup(
    name="ssl_jax",
    version="0.1.0",
    description="Self-supervised visual representation learning in JAX/Flax (SimCLR, ...).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["ssl_jax", "ssl_jax.*"]),
    package_data={"ssl_jax.data": ["demo/*.tar.xz"]},
    include_package_data=True,
    # Lower bounds are the tested versions; constraints.txt pins the exact versions CI installs.
    # jax/jaxlib stay below the next minor: a new jax can change CPU speed and numerics (and
    # ssl_jax/cpu_flags.py sets its XLA flag only on measured jaxlib versions).
    install_requires=[
        "absl-py",
        "einops",
        "flax>=0.12.8,<0.13",
        "jax>=0.10.2,<0.11",
        "jaxlib>=0.10.2,<0.11",
        "ml-collections",
        "numpy>=2.0,<3",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "pillow",
        # export/torchvision.safetensors: PyTorch-loadable weights without needing torch
        "safetensors>=0.7,<1",
        # visualize.py: t-SNE of the test features (embedding.png), pinned to one OpenMP thread
        # with threadpoolctl (a scikit-learn dependency, imported directly)
        "scikit-learn>=1.9,<2",
        "threadpoolctl>=3.8",
        # TensorBoard event files (tf.summary needs it; tensorflow-cpu lacks it)
        "tensorboard>=2.21",
        "tensorflow-cpu>=2.21,<3",
        "tensorflow-datasets>=4.9.10,<5",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-timeout",
            "pytest-xdist",
            "ruff",
            # tests/test_cloud_storage.py: the command line on gs:// workdirs, against an
            # in-memory GCS on localhost (no network); gcsfs is how epath reaches it there
            "gcp-storage-emulator>=2026.7",
            "gcsfs>=2026.9",
        ]
    },
)
