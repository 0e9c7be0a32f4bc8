"""One module per pre-commit hook, each with `main(argv=None) -> int`."""
