"""arviz's per-parameter diagnostics of part of a block, in a second interpreter
(draw_diagnostics.diagnose_in_parallel)::

    python -m schoolquality_assets.models.diagnose_worker DRAWS.npy OUT.npz PARENT_PID

DRAWS.npy holds (K, chain, draw) draws; OUT.npz gets draw_diagnostics.diagnose_draws of them (arviz's
R-hat and ESS, the block sums of squares). The worker dies with the process PARENT_PID.
"""

import os
import sys

import numpy as np

from schoolquality_assets.engine.processes import die_with_parent


def main(draws: str, out: str, parent: str) -> None:
    die_with_parent(int(parent))
    from schoolquality_assets.models import draw_diagnostics

    result = draw_diagnostics.diagnose_draws(np.load(draws), draw_diagnostics.PUBLISHED_QUANTILES, screen=False)
    tmp = out + ".part.npz"
    np.savez(tmp, **result)
    os.replace(tmp, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
