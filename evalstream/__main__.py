"""``python -m evalstream``: the same as the ``evalstream`` command."""

from evalstream.cli import main

main()
