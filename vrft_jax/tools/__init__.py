"""Command-line tools (`python -m vrft_jax.tools.<name>`)."""
