"""Peer systems, one script each, run by :mod:`bench.harness` with their own venv's python."""
