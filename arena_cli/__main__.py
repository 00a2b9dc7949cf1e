"""`python -m arena_cli ...` is `arena ...`."""
import sys

from arena_cli.main import main

sys.exit(main())
