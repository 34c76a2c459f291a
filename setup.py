"""ssl_jax: self-supervised visual pretraining in JAX/Flax."""

import setuptools

setuptools.setup(
    name="ssl_jax",
    version="0.1.0",
    description="Self-supervised visual representation learning in JAX/Flax (SimCLR, ...).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["ssl_jax", "ssl_jax.*"]),
    package_data={"ssl_jax.data": ["demo/*.tar.xz"]},
    include_package_data=True,
    install_requires=[
        "absl-py",
        "chex",
        "clu",
        "einops",
        "flax>=0.10",
        "jax>=0.6",
        "ml-collections",
        "numpy",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "pillow",
        "tensorboard",  # TensorBoard event files (tf.summary needs it; tensorflow-cpu lacks it)
        "tensorflow-cpu>=2.16",
        "tensorflow-datasets>=4.9",
    ],
    extras_require={"test": ["pytest", "pytest-xdist", "ruff"]},
)
