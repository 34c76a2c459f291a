"""The console progress line."""

from ssl_jax.metrics_writer import progress_line


def test_progress_line_leaves_the_compiling_step_out_of_speed_and_eta():
    record = {"step": 1, "loss": 5.0, "lr": 0.1, "images_per_sec": None}
    line = progress_line(record, 100, 10, None)
    assert "compiling" in line and "ETA --" in line and "img/s" not in line
    record = {"step": 26, "loss": 4.0, "lr": 0.1, "images_per_sec": 170.4}
    line = progress_line(record, 100, 10, 65.0)
    assert "170 img/s" in line and "ETA 1m05s" in line
