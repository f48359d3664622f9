"""``python -m heimdall.cli``: the same as the ``heimdall`` console script."""

from heimdall.cli import main

if __name__ == "__main__":
    main()
