"""Suite-wide set-up."""
import os

# Before torch is imported: idle OpenMP threads sleep instead of spinning, so tests that run beside
# servers or subprocesses on a 2-core CI machine do not slow each other down several-fold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
