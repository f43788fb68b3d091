"""The `segany` command line: one module per group of commands."""
