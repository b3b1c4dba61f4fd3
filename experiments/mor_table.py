"""MoR against its baselines on the synthetic federated world: the paper's table and claim tests.

    python experiments/mor_table.py --profile quick --out runs/experiments/quick-results   # minutes
    python experiments/mor_table.py --profile full --out experiments/results              # the committed table

The library lives in services/pipeline/table/ (profiles, preparation, jobs, summary, report, plots,
driver) on top of the pipeline's stages; this file is only its command line.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a checkout without installing: the repository root holds the `services` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.pipeline.table.driver import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
