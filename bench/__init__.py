"""Benchmarks of ddipp against its peers, measured side by side in one run: `python -m bench`."""
