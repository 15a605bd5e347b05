"""Benchmarks of the provider against the bundled simulator. Each script runs as a module, from the
repository root: ``.venv/bin/python -m benchmarks.<script>`` (see README.md here)."""
