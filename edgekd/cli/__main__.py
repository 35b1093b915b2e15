"""``python -m edgekd.cli``."""

from edgekd.cli import main

main()
