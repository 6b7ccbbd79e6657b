"""The `foodcls` command line: parse options, call the library, print. Heavy imports stay inside commands.
Each module registers its commands on the one app (common.py) when imported here."""

from foodcls.cli import datasets, experiments, model  # noqa: F401 - importing registers the commands
from foodcls.cli.common import app

# --help lists the commands in the order a user meets them, whichever module defines them.
_ORDER = ("init", "train", "eval", "predict", "sweep", "cv", "tune", "serve", "export", "card", "plot")
app.registered_commands.sort(key=lambda command: _ORDER.index(command.name or command.callback.__name__))

__all__ = ["app"]
