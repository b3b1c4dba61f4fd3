"""Generated gRPC/protobuf stubs for the MoR wire contract (package mor.v1).

Every `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` here is GENERATED from protos/mor/v1/*.proto and
must never be edited by hand: change the .proto, then run

    python -m services.common.wire.generate

and commit both. `--check` (run by the tests) fails when a stub is stale. protos/mor/v1 is
flattened into this package, so import e.g. `from services.common.wire import reward_node_pb2,
reward_node_pb2_grpc`. Only servicer and client modules should import these.
"""
