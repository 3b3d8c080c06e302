"""The test harness itself: CPU with 8 fake devices."""

import jax


def test_eight_cpu_devices():
    assert jax.default_backend() == "cpu"
    assert jax.device_count() == 8
