"""ssl_jax: self-supervised visual pretraining in JAX/Flax."""

# First, before any jax backend starts: faster CPU convolutions (see ssl_jax/cpu_flags.py;
# SSL_JAX_CPU_XLA_FLAGS=off turns it off).
from ssl_jax import cpu_flags as _cpu_flags

_cpu_flags.apply()
