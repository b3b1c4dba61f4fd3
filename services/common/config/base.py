"""Shared machinery for MoR's typed configuration: frozen models, YAML loading, readable errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every bad field."""


class Section(BaseModel):
    """Base of every config section: frozen after loading, unknown keys are errors (typos must not pass)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ServiceSettings(BaseSettings):
    """Base of the per-service settings: YAML gives the values, ``MOR_<SERVICE>__<field>__<sub>`` overrides them.

    Environment wins over YAML so that a deployment can change one value (a port, a token path) without
    editing the file that ships with the image.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_nested_delimiter="__", case_sensitive=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, init_settings, file_secret_settings


M = TypeVar("M", bound=BaseModel)


def format_validation_error(err: ValidationError, source: str | None = None) -> str:
    """One line per problem, each naming the dotted field path, what is wrong and what was given."""
    where = f" in {source}" if source else ""
    lines = [f"{err.error_count()} invalid field(s){where}:"]
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        given = e.get("input")
        shown = "" if e["type"] in ("missing",) or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {loc}: {e['msg']}{shown}")
    return "\n".join(lines)


def read_yaml(path: str | Path, what: str = "config file", mapping: str = "a mapping of fields") -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping document is a ConfigError.

    ``what`` and ``mapping`` name the file and its expected shape in the messages.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be {mapping}, got {type(data).__name__}")
    return data


def build(model_cls: type[M], data: dict[str, Any], source: str | None = None) -> M:
    """Validate ``data`` into ``model_cls``, turning pydantic's error into a ConfigError naming the fields."""
    try:
        return model_cls(**data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_yaml(model_cls: type[M], path: str | Path) -> M:
    """Load one config model from a YAML file (environment overrides apply to ServiceSettings)."""
    return build(model_cls, read_yaml(path), str(path))


def redacted_dump(model: BaseModel) -> dict[str, Any]:
    """A JSON-able dump with secrets replaced, safe to log or write beside results."""

    def scrub(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "**********"
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [scrub(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return scrub(model.model_dump(mode="python"))


def describe_fields(model_cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Walk a config model: (dotted name, type, default, description) for every leaf, for `mor config show`."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model_cls.model_fields.items():
        dotted = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.append((dotted, ann.__name__, "", field.description or ""))
            rows.extend(describe_fields(ann, dotted + "."))
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        rows.append((dotted, type_name, default, field.description or ""))
    return rows
