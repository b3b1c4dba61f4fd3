from services.common.wire import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreRequest(_message.Message):
    __slots__ = ("request_id", "prompt", "image", "responses", "return_parts")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    RETURN_PARTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt: str
    image: _common_pb2.Image
    responses: _containers.RepeatedScalarFieldContainer[str]
    return_parts: bool
    def __init__(self, request_id: _Optional[str] = ..., prompt: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., responses: _Optional[_Iterable[str]] = ..., return_parts: _Optional[bool] = ...) -> None: ...

class Score(_message.Message):
    __slots__ = ("overall", "parts")
    class PartsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    overall: float
    parts: _containers.ScalarMap[str, float]
    def __init__(self, overall: _Optional[float] = ..., parts: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "node_id", "model_version", "request_id")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[Score]
    node_id: str
    model_version: str
    request_id: str
    def __init__(self, scores: _Optional[_Iterable[_Union[Score, _Mapping]]] = ..., node_id: _Optional[str] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ScoreGroup(_message.Message):
    __slots__ = ("group_id", "prompt", "image", "responses")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    prompt: str
    image: _common_pb2.Image
    responses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, group_id: _Optional[str] = ..., prompt: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., responses: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("request_id", "groups", "return_parts")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    RETURN_PARTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    groups: _containers.RepeatedCompositeFieldContainer[ScoreGroup]
    return_parts: bool
    def __init__(self, request_id: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[ScoreGroup, _Mapping]]] = ..., return_parts: _Optional[bool] = ...) -> None: ...

class ScoreGroupResult(_message.Message):
    __slots__ = ("group_id", "scores")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    scores: _containers.RepeatedCompositeFieldContainer[Score]
    def __init__(self, group_id: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[Score, _Mapping]]] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("groups", "node_id", "model_version", "request_id")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[ScoreGroupResult]
    node_id: str
    model_version: str
    request_id: str
    def __init__(self, groups: _Optional[_Iterable[_Union[ScoreGroupResult, _Mapping]]] = ..., node_id: _Optional[str] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RewardNodeGetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RewardNodeGetInfoResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: NodeInfo
    def __init__(self, info: _Optional[_Union[NodeInfo, _Mapping]] = ...) -> None: ...

class ScoreRange(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class NodeLimits(_message.Message):
    __slots__ = ("max_responses", "max_prompt_chars", "max_response_chars", "image", "max_batch_groups")
    MAX_RESPONSES_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESPONSE_CHARS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_GROUPS_FIELD_NUMBER: _ClassVar[int]
    max_responses: int
    max_prompt_chars: int
    max_response_chars: int
    image: _common_pb2.ImageLimits
    max_batch_groups: int
    def __init__(self, max_responses: _Optional[int] = ..., max_prompt_chars: _Optional[int] = ..., max_response_chars: _Optional[int] = ..., image: _Optional[_Union[_common_pb2.ImageLimits, _Mapping]] = ..., max_batch_groups: _Optional[int] = ...) -> None: ...

class DomainPrototype(_message.Message):
    __slots__ = ("embedding", "noise_sigma", "embedder", "dp_epsilon", "dp_delta", "clip_norm")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    NOISE_SIGMA_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    DP_EPSILON_FIELD_NUMBER: _ClassVar[int]
    DP_DELTA_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    noise_sigma: float
    embedder: str
    dp_epsilon: float
    dp_delta: float
    clip_norm: float
    def __init__(self, embedding: _Optional[_Iterable[float]] = ..., noise_sigma: _Optional[float] = ..., embedder: _Optional[str] = ..., dp_epsilon: _Optional[float] = ..., dp_delta: _Optional[float] = ..., clip_norm: _Optional[float] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "rm_kind", "objectives", "score_range", "score_mean", "score_std", "model_version", "limits", "domain_prototype", "serving_state")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RM_KIND_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVES_FIELD_NUMBER: _ClassVar[int]
    SCORE_RANGE_FIELD_NUMBER: _ClassVar[int]
    SCORE_MEAN_FIELD_NUMBER: _ClassVar[int]
    SCORE_STD_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_PROTOTYPE_FIELD_NUMBER: _ClassVar[int]
    SERVING_STATE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    rm_kind: str
    objectives: _containers.RepeatedScalarFieldContainer[str]
    score_range: ScoreRange
    score_mean: float
    score_std: float
    model_version: str
    limits: NodeLimits
    domain_prototype: DomainPrototype
    serving_state: _common_pb2.ServingState
    def __init__(self, node_id: _Optional[str] = ..., rm_kind: _Optional[str] = ..., objectives: _Optional[_Iterable[str]] = ..., score_range: _Optional[_Union[ScoreRange, _Mapping]] = ..., score_mean: _Optional[float] = ..., score_std: _Optional[float] = ..., model_version: _Optional[str] = ..., limits: _Optional[_Union[NodeLimits, _Mapping]] = ..., domain_prototype: _Optional[_Union[DomainPrototype, _Mapping]] = ..., serving_state: _Optional[_Union[_common_pb2.ServingState, str]] = ...) -> None: ...
