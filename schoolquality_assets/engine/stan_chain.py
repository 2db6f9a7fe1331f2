"""One PyStan chain, as a child process of the fit (pystan_engine._ChainProcess)::

    python -m schoolquality_assets.engine.stan_chain ARGS_FILE PARENT_PID

ARGS_FILE holds the pickled keyword arguments of ``pystan_engine.run_chain``. The chain's messages
(iteration reports, warnings) go to stdout, one JSON value a line; anything else written to
stdout goes to stderr. The chain dies with the process PARENT_PID.
"""

import json
import os
import pickle
import sys
from pathlib import Path

from schoolquality_assets.engine.processes import die_with_parent


class Messages:
    """``put`` for the chain's reader: one JSON line on the message pipe (line-buffered)."""

    def __init__(self, stream):
        self.stream = stream

    def put(self, message) -> None:
        self.stream.write(json.dumps(message) + "\n")


def main(args_file: str, parent: str) -> None:
    die_with_parent(int(parent))
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    args = pickle.loads(Path(args_file).read_bytes())
    from schoolquality_assets.engine.pystan_engine import (
        run_chain,  # the chain, in this child process
    )

    run_chain(messages=Messages(out), **args)


if __name__ == "__main__":
    main(*sys.argv[1:])
