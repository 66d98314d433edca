"""`python -m dlcv ...` entry point."""

from dlcv.cli import main

raise SystemExit(main())
