"""Shared start of the scripts in models/experiments/: import it before numpy and the pipeline's modules.

One BLAS/OpenMP thread (a shared 2-core machine), no __pycache__ beside the pipeline, and models/ on the import path
so that the scripts use the pipeline's own modules (cohort, features, report, selection, train), never copies.
"""

import os
import sys

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
sys.dont_write_bytecode = True
EXPERIMENTS = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.dirname(EXPERIMENTS)
REPO = os.path.dirname(MODELS)
if MODELS not in sys.path:
    sys.path.insert(0, MODELS)
