"""One module per CLI command; each reads parsed arguments and prints."""
