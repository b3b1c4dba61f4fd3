"""The paper's comparison on the synthetic federated world (`python experiments/mor_table.py`).

    profiles.py   what is run: methods, seeds, budgets, the claim tests (quick and full profiles)
    prepare.py    the scenario worlds, the one SFT start, every reward model (client, centralised, FedAvg)
    jobs.py       one GRPO run against in-process reward nodes, then held-out evaluation
    summary.py    per-seed numbers -> mean/std rows and the claim verdicts
    report.py     results.json and results.md (every number of the markdown comes from the JSON)
    plots.py      reward/KL curves, router weights per domain, accuracy bars, claim plots (PNG)
    driver.py     prepare, run every job (optionally in worker processes), report

Worlds, the SFT start, reward models and finished jobs are cached under the pipeline's one rule
(services/pipeline/cache.py), so an interrupted table resumes.
"""
