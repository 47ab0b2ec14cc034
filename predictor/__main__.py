"""`python -m predictor` runs the `layoutcast` CLI."""

from predictor.cli import main

raise SystemExit(main())
