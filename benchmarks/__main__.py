"""`python -m benchmarks`: run the suite."""

from benchmarks.cli import main

raise SystemExit(main())
