"""`python -m shoggoth`: the same program as the `shoggoth` command."""

from shoggoth.cli import entry

entry()
