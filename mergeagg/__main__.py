"""``python -m mergeagg``: the ``mergeagg`` command, for when the console script is not on
``PATH`` (a venv that is not activated, ``pipx``-less machines). See :mod:`mergeagg.cli`."""

import sys

from mergeagg.cli import main

# The guard matters: worker processes started by spawn or forkserver import the main
# module again (as ``__mp_main__``), and must not run the command a second time.
if __name__ == "__main__":
    sys.exit(main())
