"""Command-line interface: one module per command, registered lazily in main.py."""
