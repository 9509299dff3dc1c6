from autoqra.cli import main

if __name__ == "__main__":  # a spawned worker process imports this module again; it must not rerun the CLI
    raise SystemExit(main())
