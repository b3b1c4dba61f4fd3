from services.common.wire import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]

class WeightsKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEIGHTS_KIND_UNSPECIFIED: _ClassVar[WeightsKind]
    WEIGHTS_KIND_LORA_ADAPTER: _ClassVar[WeightsKind]
    WEIGHTS_KIND_FULL_WEIGHTS: _ClassVar[WeightsKind]

class SamplerBackend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLER_BACKEND_UNSPECIFIED: _ClassVar[SamplerBackend]
    SAMPLER_BACKEND_HF: _ClassVar[SamplerBackend]
    SAMPLER_BACKEND_VLLM: _ClassVar[SamplerBackend]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
WEIGHTS_KIND_UNSPECIFIED: WeightsKind
WEIGHTS_KIND_LORA_ADAPTER: WeightsKind
WEIGHTS_KIND_FULL_WEIGHTS: WeightsKind
SAMPLER_BACKEND_UNSPECIFIED: SamplerBackend
SAMPLER_BACKEND_HF: SamplerBackend
SAMPLER_BACKEND_VLLM: SamplerBackend

class Prompt(_message.Message):
    __slots__ = ("prompt_id", "text", "image")
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    prompt_id: str
    text: str
    image: _common_pb2.Image
    def __init__(self, prompt_id: _Optional[str] = ..., text: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "prompts", "group_size", "sampling", "expected_policy_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    group_size: int
    sampling: _common_pb2.SamplingParams
    expected_policy_version: int
    def __init__(self, request_id: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ..., group_size: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., expected_policy_version: _Optional[int] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("text", "token_ids", "logprobs", "finish_reason")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    finish_reason: FinishReason
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ...) -> None: ...

class CompletionGroup(_message.Message):
    __slots__ = ("prompt_id", "completions")
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    prompt_id: str
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    def __init__(self, prompt_id: _Optional[str] = ..., completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("groups", "policy_version", "request_id")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[CompletionGroup]
    policy_version: int
    request_id: str
    def __init__(self, groups: _Optional[_Iterable[_Union[CompletionGroup, _Mapping]]] = ..., policy_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class WeightsHeader(_message.Message):
    __slots__ = ("version", "kind", "total_bytes", "sha256", "format", "adapter_config_json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    version: int
    kind: WeightsKind
    total_bytes: int
    sha256: str
    format: str
    adapter_config_json: str
    def __init__(self, version: _Optional[int] = ..., kind: _Optional[_Union[WeightsKind, str]] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., format: _Optional[str] = ..., adapter_config_json: _Optional[str] = ...) -> None: ...

class UpdateWeightsRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: WeightsHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[WeightsHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UpdateWeightsResponse(_message.Message):
    __slots__ = ("version", "applied", "bytes_received")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    version: int
    applied: bool
    bytes_received: int
    def __init__(self, version: _Optional[int] = ..., applied: _Optional[bool] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class PolicySamplerGetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicySamplerGetInfoResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: SamplerInfo
    def __init__(self, info: _Optional[_Union[SamplerInfo, _Mapping]] = ...) -> None: ...

class SamplerLimits(_message.Message):
    __slots__ = ("max_prompts", "max_group_size", "max_new_tokens", "max_prompt_chars", "image", "max_weights_bytes")
    MAX_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_prompts: int
    max_group_size: int
    max_new_tokens: int
    max_prompt_chars: int
    image: _common_pb2.ImageLimits
    max_weights_bytes: int
    def __init__(self, max_prompts: _Optional[int] = ..., max_group_size: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., max_prompt_chars: _Optional[int] = ..., image: _Optional[_Union[_common_pb2.ImageLimits, _Mapping]] = ..., max_weights_bytes: _Optional[int] = ...) -> None: ...

class SamplerInfo(_message.Message):
    __slots__ = ("model_name", "model_arch", "backend", "policy_version", "limits", "serving_state")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_ARCH_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SERVING_STATE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_arch: str
    backend: SamplerBackend
    policy_version: int
    limits: SamplerLimits
    serving_state: _common_pb2.ServingState
    def __init__(self, model_name: _Optional[str] = ..., model_arch: _Optional[str] = ..., backend: _Optional[_Union[SamplerBackend, str]] = ..., policy_version: _Optional[int] = ..., limits: _Optional[_Union[SamplerLimits, _Mapping]] = ..., serving_state: _Optional[_Union[_common_pb2.ServingState, str]] = ...) -> None: ...
