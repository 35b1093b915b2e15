"""``python -m edgekd``."""

from edgekd.cli import main

main()
