"""The policy sampler: grouped rollouts of the current policy over gRPC, with versioned weight updates.

    app.py        SamplerApp: gRPC service + life cycle from SamplerSettings (`mor sampler serve`)
    servicer.py   thin protobuf adapter over Sampler
    sampler.py    admission, version tagging, the update protocol
    requests.py   Generate calls: validation against the limits, sampling defaults
    weights.py    update header/version rules, payload checks, the swap gate, payload encoders
    backends/     base.py (interface), hf.py (transformers), vllm_backend.py (+ vllm_worker.py)
    client.py     typed async client with push helpers for adapters and full weights
"""
