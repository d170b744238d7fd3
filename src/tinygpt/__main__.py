"""`python -m tinygpt ...` is the `tinygpt` command."""
import sys

from tinygpt.cli import main

sys.exit(main())
