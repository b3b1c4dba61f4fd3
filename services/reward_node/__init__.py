"""One organisation's reward node: private RM training and the mor.v1.RewardNode gRPC service.

    rm/            RM architectures behind rm/base.RewardModel: light (MiniLM + CNN), vlm (VLM + LoRA)
    data.py        the node's own preference pairs (training only, never served)
    train.py       Bradley-Terry training, held-out pair accuracy, checkpoint metadata
    checkpoint.py  safetensors + metadata.json on disk, verified on load
    hybrid.py      RM score mixed with the node's rule parts (format, length)
    validation.py  request checks against the node's limits (InvalidInput naming the field)
    batcher.py     dynamic batching across concurrent requests, bounded queue (Overloaded)
    node.py        the domain core: load, validate, batch, score, describe (no grpc)
    servicer.py    thin protobuf adapter (the only server module importing *_pb2)
    app.py         builds servicer + GrpcService from settings; start / run / graceful stop
    client.py      typed async client (deadlines, retries for Score/GetInfo, TLS, tokens)

CLI: ``mor reward-node train --config X`` and ``mor reward-node serve --config X``.
"""
