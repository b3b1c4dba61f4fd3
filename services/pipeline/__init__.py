"""The local and experiment pipeline, composed in one place:

    world -> SFT start -> client RMs (and the two baseline RMs) -> serving -> MoR run -> held-out eval

    cache.py          the one artefact-cache rule every stage builds through
    world.py          the synthetic world: made or reused, summarised
    sft.py            the supervised warm start of the policy (`mor sft`, and the cached stage)
    reward_models.py  client and baseline RMs: their cache key, training in process, serving in process
    baselines.py      the centralised (pooled) and FedAvg RMs MoR is compared against
    processes.py      the local stack's child processes: spawn, wait until serving, stop together
    stack.py          `mor stack up` / `mor demo`: every stage, the services as separate processes
    table/            the paper's comparison (`python experiments/mor_table.py`): profiles, jobs, report

The services (reward_node, policy_sampler, orchestrator) never import this package; it imports them.
"""
