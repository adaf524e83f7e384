"""`python -m exporter` runs the command-line tool."""

import sys

from exporter.cli import main

sys.exit(main())
