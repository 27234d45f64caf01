"""``python -m bopsweep.cli``: the ``bopsweep`` command."""

from bopsweep.cli import command

command()
