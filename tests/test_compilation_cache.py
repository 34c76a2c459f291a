"""The persistent compilation cache: where ssl_jax points it, and that a fresh process (here:
cleared in-memory caches) loads the compiled program instead of compiling it again."""

import jax
import jax.numpy as jnp
import pytest
from jax import monitoring

from ssl_jax import compilation_cache


@pytest.fixture
def cache_state():
    """Saves and restores JAX's cache settings around a test (they are process-wide)."""
    saved = (jax.config.jax_compilation_cache_dir,
             jax.config.jax_persistent_cache_min_compile_time_secs)  # fmt: skip
    # Every compile is written, however quick: the test's programs compile in milliseconds.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    events = []
    monitoring.register_event_listener(lambda name, **kw: events.append(name))
    yield events
    monitoring.clear_event_listeners()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
    jax.config.update("jax_compilation_cache_dir", saved[0])
    compilation_cache.jax_cache.reset_cache()
    compilation_cache._set_by_us = None


def _compile_something(offset: float):
    f = jax.jit(lambda x: jnp.tanh(x @ x.T) + offset)
    return f(jnp.ones((8, 8))).block_until_ready()


def test_a_restart_loads_the_compiled_program_from_the_workdir(cache_state, tmp_path):
    events = cache_state
    assert compilation_cache.use("", str(tmp_path)) == str(tmp_path / "compilation_cache")
    _compile_something(1.0)
    assert list((tmp_path / "compilation_cache").iterdir())  # written there
    jax.clear_caches()  # what a new process starts with: nothing compiled in memory
    events.clear()
    _compile_something(1.0)
    assert "/jax/compilation_cache/cache_hits" in events


def test_a_second_run_in_the_same_process_moves_the_cache_and_off_is_off(cache_state, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    compilation_cache.use("", str(first))
    _compile_something(2.0)
    compilation_cache.use(str(second), str(first))  # an explicit path wins over the workdir
    _compile_something(3.0)
    assert list(second.iterdir()), "JAX kept writing to the first run's cache"
    assert compilation_cache.use(compilation_cache.OFF, str(first)) is None
    assert not jax.config.jax_compilation_cache_dir  # what the earlier run turned on is off


def test_a_cache_directory_the_user_gave_jax_is_kept(cache_state, tmp_path):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    compilation_cache._set_by_us = None  # as if JAX_COMPILATION_CACHE_DIR set it at start-up
    assert compilation_cache.use("", str(tmp_path / "workdir")) == str(tmp_path / "mine")
