"""``python -m mcsim``: the command line (see :mod:`mcsim.cli`)."""
from mcsim.cli import app

app()
