"""`python -m paceline` is the `paceline` console script."""

from paceline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
