"""``python -m asgictl``: the same as the ``asgictl`` command."""

from asgictl.cli import main

main()
