"""Console scripts: thin argument parsing over importable library functions, one readable error line."""
