"""Command-line tools (``convcrf-eval``, ``convcrf-train``, ...): thin layers over the Python API.

Each module has ``main(argv=None) -> int`` built on argparse, declared as a console script in
pyproject.toml.
"""
