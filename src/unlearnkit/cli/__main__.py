"""``python -m unlearnkit.cli``."""

from unlearnkit.cli import main

main()
