import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from services.common.wire import reward_node_pb2 as _reward_node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_PENDING: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_STOPPING: _ClassVar[RunState]
    RUN_STATE_STOPPED: _ClassVar[RunState]
    RUN_STATE_COMPLETED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_PENDING: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_STOPPING: RunState
RUN_STATE_STOPPED: RunState
RUN_STATE_COMPLETED: RunState
RUN_STATE_FAILED: RunState

class Run(_message.Message):
    __slots__ = ("run_id", "state", "create_time", "update_time", "step", "total_steps", "policy_version", "config_yaml", "latest_metrics", "error_message")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    LATEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: RunState
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    step: int
    total_steps: int
    policy_version: int
    config_yaml: str
    latest_metrics: StepMetrics
    error_message: str
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., policy_version: _Optional[int] = ..., config_yaml: _Optional[str] = ..., latest_metrics: _Optional[_Union[StepMetrics, _Mapping]] = ..., error_message: _Optional[str] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("run_id", "config_yaml", "config_struct", "overrides")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    CONFIG_STRUCT_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    config_yaml: str
    config_struct: _struct_pb2.Struct
    overrides: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., config_yaml: _Optional[str] = ..., config_struct: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., overrides: _Optional[_Iterable[str]] = ...) -> None: ...

class StartRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "from_step")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    from_step: int
    def __init__(self, run_id: _Optional[str] = ..., from_step: _Optional[int] = ...) -> None: ...

class WatchRunResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: RunEvent
    def __init__(self, event: _Optional[_Union[RunEvent, _Mapping]] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("sequence", "time", "run_id", "step", "state_change")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    run_id: str
    step: StepMetrics
    state_change: RunStateChange
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., run_id: _Optional[str] = ..., step: _Optional[_Union[StepMetrics, _Mapping]] = ..., state_change: _Optional[_Union[RunStateChange, _Mapping]] = ...) -> None: ...

class RunStateChange(_message.Message):
    __slots__ = ("previous_state", "state", "reason")
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    previous_state: RunState
    state: RunState
    reason: str
    def __init__(self, previous_state: _Optional[_Union[RunState, str]] = ..., state: _Optional[_Union[RunState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class PhaseTimes(_message.Message):
    __slots__ = ("generate_seconds", "score_seconds", "fuse_seconds", "train_seconds", "push_weights_seconds", "total_seconds")
    GENERATE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FUSE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PUSH_WEIGHTS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    generate_seconds: float
    score_seconds: float
    fuse_seconds: float
    train_seconds: float
    push_weights_seconds: float
    total_seconds: float
    def __init__(self, generate_seconds: _Optional[float] = ..., score_seconds: _Optional[float] = ..., fuse_seconds: _Optional[float] = ..., train_seconds: _Optional[float] = ..., push_weights_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ...) -> None: ...

class NodeStepMetrics(_message.Message):
    __slots__ = ("node_id", "responded", "error_code", "score_mean", "score_std", "weight_mean", "latency_seconds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONDED_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    SCORE_MEAN_FIELD_NUMBER: _ClassVar[int]
    SCORE_STD_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_MEAN_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    responded: bool
    error_code: str
    score_mean: float
    score_std: float
    weight_mean: float
    latency_seconds: float
    def __init__(self, node_id: _Optional[str] = ..., responded: _Optional[bool] = ..., error_code: _Optional[str] = ..., score_mean: _Optional[float] = ..., score_std: _Optional[float] = ..., weight_mean: _Optional[float] = ..., latency_seconds: _Optional[float] = ...) -> None: ...

class StepMetrics(_message.Message):
    __slots__ = ("step", "policy_version", "reward_mean", "reward_std", "fused_reward_mean", "rule_reward_mean", "kl", "loss", "clip_fraction_low", "clip_fraction_high", "zero_std_group_fraction", "nodes", "phase_times", "reward_std_in_group")
    STEP_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REWARD_MEAN_FIELD_NUMBER: _ClassVar[int]
    REWARD_STD_FIELD_NUMBER: _ClassVar[int]
    FUSED_REWARD_MEAN_FIELD_NUMBER: _ClassVar[int]
    RULE_REWARD_MEAN_FIELD_NUMBER: _ClassVar[int]
    KL_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CLIP_FRACTION_LOW_FIELD_NUMBER: _ClassVar[int]
    CLIP_FRACTION_HIGH_FIELD_NUMBER: _ClassVar[int]
    ZERO_STD_GROUP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    PHASE_TIMES_FIELD_NUMBER: _ClassVar[int]
    REWARD_STD_IN_GROUP_FIELD_NUMBER: _ClassVar[int]
    step: int
    policy_version: int
    reward_mean: float
    reward_std: float
    fused_reward_mean: float
    rule_reward_mean: float
    kl: float
    loss: float
    clip_fraction_low: float
    clip_fraction_high: float
    zero_std_group_fraction: float
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStepMetrics]
    phase_times: PhaseTimes
    reward_std_in_group: float
    def __init__(self, step: _Optional[int] = ..., policy_version: _Optional[int] = ..., reward_mean: _Optional[float] = ..., reward_std: _Optional[float] = ..., fused_reward_mean: _Optional[float] = ..., rule_reward_mean: _Optional[float] = ..., kl: _Optional[float] = ..., loss: _Optional[float] = ..., clip_fraction_low: _Optional[float] = ..., clip_fraction_high: _Optional[float] = ..., zero_std_group_fraction: _Optional[float] = ..., nodes: _Optional[_Iterable[_Union[NodeStepMetrics, _Mapping]]] = ..., phase_times: _Optional[_Union[PhaseTimes, _Mapping]] = ..., reward_std_in_group: _Optional[float] = ...) -> None: ...

class StopRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class StopRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("node_id", "endpoint", "healthy", "last_check_time", "info", "last_error")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECK_TIME_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    endpoint: str
    healthy: bool
    last_check_time: _timestamp_pb2.Timestamp
    info: _reward_node_pb2.NodeInfo
    last_error: str
    def __init__(self, node_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., healthy: _Optional[bool] = ..., last_check_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., info: _Optional[_Union[_reward_node_pb2.NodeInfo, _Mapping]] = ..., last_error: _Optional[str] = ...) -> None: ...

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node_id", "endpoint")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    endpoint: str
    def __init__(self, node_id: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class RegisterNodeResponse(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: Node
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class RemoveNodeResponse(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: Node
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ...) -> None: ...
