"""`python -m clipzs`: the `clipzs` command, where the environment's scripts folder is not on the PATH."""

import sys

from .cli import console

sys.exit(console())
