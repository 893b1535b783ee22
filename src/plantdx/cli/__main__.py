"""``python -m plantdx.cli``: the same as the ``plantdx`` command."""

from plantdx.cli import main

main()
