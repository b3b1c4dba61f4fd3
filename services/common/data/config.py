"""Configuration of the synthetic federated VQA world (`mor data make`).

Frozen pydantic models, every field documented where it is declared. Static checks only (names,
weights, capacity of the train splits); nothing here touches the disk.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .benchmarks.registry import BENCHMARK_NAMES
from .records import PAIR_KINDS

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
RESERVED_NAMES = frozenset({"server", "truth"})


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError(
            f"{v!r} is not a valid client name (lowercase letter first, then [a-z0-9_-], max 32)"
        )
    if v in RESERVED_NAMES:
        raise ValueError(f"{v!r} is reserved; reserved names: {sorted(RESERVED_NAMES)}")
    return v


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SplitCounts(_Frozen):
    """How many examples one benchmark has in each split."""

    train: int = Field(8000, ge=1, le=1_000_000, description="Examples in the train split.")
    test: int = Field(600, ge=1, le=1_000_000, description="Examples in the test split.")


def _default_benchmarks() -> dict[str, SplitCounts]:
    return {name: SplitCounts() for name in BENCHMARK_NAMES}


def largest_remainder(weights: dict[str, float], total: int) -> dict[str, int]:
    """Split `total` into integers proportional to `weights` (Hamilton's method, ties by sorted key).

    Deterministic and independent of dict order, so the validator, the generator and a config read
    back from a manifest (sorted keys) all agree on how many items each benchmark gets.
    """
    keys = sorted(weights)
    s = sum(weights.values())
    exact = [weights[k] / s * total for k in keys]
    out = [int(e) for e in exact]
    order = sorted(range(len(keys)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return dict(zip(keys, out, strict=True))


class ClientSpec(_Frozen):
    """One organisation: its data domain, how it likes answers written, its RM and its label noise."""

    name: str = Field(description="Client id, also its folder name: lowercase letters, digits, '-', '_'.")
    domain_mix: dict[str, float] = Field(
        description="Benchmark -> positive weight; the client's preference pairs are drawn in these proportions."
    )
    style: Literal["word", "digits", "justified"] = Field(
        description="Preferred answer style: 'word' (three), 'digits' (3) or 'justified' (3 because ...)."
    )
    rm_arch: Literal["vlm", "light"] = Field(
        description="Reward-model architecture the client trains: a small VLM or a light embedding head."
    )
    label_noise: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="Share of this client's preference labels flipped (annotation noise).",
    )
    n_pairs_train: int = Field(400, ge=1, le=1_000_000, description="Preference pairs in prefs_train.jsonl.")
    n_pairs_test: int = Field(100, ge=1, le=1_000_000, description="Preference pairs in prefs_test.jsonl.")
    kind_mix: dict[str, float] | None = Field(
        None,
        description="Pair kind -> positive weight (correctness, style, format): how this client's annotators "
        "compare answers; null uses the world default 0.50 / 0.35 / 0.15.",
    )
    n_labelled: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Private labelled examples (image, question, reference answers) the client owns, drawn in "
        "domain_mix proportions, in labelled.jsonl; the RM grounds its image pathway on them. Never leave the node.",
    )

    @field_validator("kind_mix")
    @classmethod
    def _kinds_ok(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        unknown = [k for k in v if k not in PAIR_KINDS]
        if unknown or not v:
            raise ValueError(f"unknown pair kind(s) {unknown}; supported: {list(PAIR_KINDS)}")
        bad = {k: w for k, w in v.items() if not w > 0}
        if bad:
            raise ValueError(f"weights must be > 0, got {bad}")
        return v

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        return _check_name(v)

    @field_validator("domain_mix")
    @classmethod
    def _mix_ok(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("needs at least one benchmark")
        unknown = [k for k in v if k not in BENCHMARK_NAMES]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; supported: {list(BENCHMARK_NAMES)}")
        bad = {k: w for k, w in v.items() if not w > 0}
        if bad:
            raise ValueError(f"weights must be > 0, got {bad}")
        return v

    def pairs_per_benchmark(self, split: str) -> dict[str, int]:
        """How many of this client's pairs come from each benchmark in a split (largest remainder)."""
        n = self.n_pairs_train if split == "train" else self.n_pairs_test
        return largest_remainder(self.domain_mix, n)

    def labelled_per_benchmark(self) -> dict[str, int]:
        """How many of this client's labelled examples come from each benchmark (largest remainder)."""
        return largest_remainder(self.domain_mix, self.n_labelled)

    @property
    def home(self) -> str:
        """The benchmark with the largest domain weight (ties: first in sorted order)."""
        return max(sorted(self.domain_mix), key=lambda b: self.domain_mix[b])


EXPERT_KIND_MIX: dict[str, float] = {"correctness": 0.7, "style": 0.2, "format": 0.1}


def expert(name: str, home: str, style: str, rm_arch: str, **kw: object) -> ClientSpec:
    """A domain expert: 90 % of its pairs and labelled examples on its home benchmark, 5 % on each
    other, annotators who mostly judge correctness (EXPERT_KIND_MIX)."""
    mix = {b: (0.9 if b == home else 0.05) for b in BENCHMARK_NAMES}
    base: dict[str, object] = {
        "name": name, "domain_mix": mix, "style": style, "rm_arch": rm_arch,
        "n_pairs_train": 2000, "n_pairs_test": 300, "kind_mix": dict(EXPERT_KIND_MIX), "n_labelled": 3000,
    }
    base.update(kw)
    return ClientSpec.model_validate(base)


def default_clients() -> list[ClientSpec]:
    """The three default organisations, each an expert on one domain (much private data there,
    little elsewhere), with its own answer style and RM."""
    return [
        expert("clinic", "shapes", "word", "light"),
        expert("bank", "charts", "digits", "light"),
        expert("school", "digits", "justified", "light"),
    ]


def default_held_out() -> ClientSpec:
    """A client kept out of training, for the adaptability experiment (charts and shapes, justified)."""
    return ClientSpec(name="lab", domain_mix={"charts": 0.5, "shapes": 0.5}, style="justified", rm_arch="vlm")


class WorldConfig(_Frozen):
    """Everything that decides a synthetic world; the same config and seed give a byte-identical tree."""

    seed: int = Field(
        0, ge=0, le=2**63 - 1, description="Root seed; every benchmark and client derives its own."
    )
    image_size: int = Field(64, ge=32, le=512, description="Side of the square RGB PNG images, in pixels.")
    benchmarks: dict[str, SplitCounts] = Field(
        default_factory=_default_benchmarks, description="Benchmark name -> train/test example counts."
    )
    n_reference_answers: int = Field(
        10, ge=4, le=20, description="Reference answers per question (simulated annotators, as in VQA's 10)."
    )
    annotator_noise: float = Field(
        0.05, ge=0.0, le=0.3, description="Chance that one simulated annotator gives a wrong answer."
    )
    clients: list[ClientSpec] = Field(
        default_factory=default_clients, min_length=1, description="The training clients (reward nodes)."
    )
    noisy_client: bool = Field(
        True, description="Add a client with uniform domains whose labels are partly flipped."
    )
    noisy_client_name: str = Field("market", description="Name of the noisy client.")
    noisy_flip_share: float = Field(
        0.3, ge=0.0, le=0.5, description="Share of the noisy client's labels flipped."
    )
    held_out_client: ClientSpec | None = Field(
        default_factory=default_held_out,
        description="A client whose data is generated but marked held_out (adaptability experiment); null for none.",
    )
    pair_margin: float = Field(
        0.05, ge=0.0, le=0.5, description="Minimum oracle score gap between chosen and rejected of a pair."
    )
    prompt_pool_size: int = Field(
        600,
        ge=1,
        le=1_000_000,
        description="Server prompts for RL, split evenly over benchmarks (train split).",
    )
    pool_reference_share: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of pool prompts that carry their reference answers."
    )
    router_pairs_size: int = Field(
        150, ge=1, le=1_000_000, description="Server-side router pairs: the preference pairs the router trains on."
    )
    router_pair_styles: Literal["neutral", "domain"] = Field(
        "neutral",
        description="How the server labels its router pairs: 'neutral' judges correctness and format only; "
        "'domain' also prefers, on each benchmark, the answer style of the training client whose home it is "
        "(the domain's convention, which the server knows; which answers are right it does not).",
    )

    @field_validator("benchmarks")
    @classmethod
    def _benchmarks_ok(cls, v: dict[str, SplitCounts]) -> dict[str, SplitCounts]:
        if not v:
            raise ValueError("needs at least one benchmark")
        unknown = [k for k in v if k not in BENCHMARK_NAMES]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; supported: {list(BENCHMARK_NAMES)}")
        return v

    @field_validator("noisy_client_name")
    @classmethod
    def _noisy_name_ok(cls, v: str) -> str:
        return _check_name(v)

    def noisy_spec(self) -> ClientSpec | None:
        """The noisy client derived from this config: uniform over the benchmarks, digits style, light RM,
        label_noise = noisy_flip_share, as many pairs as the first training client."""
        if not self.noisy_client:
            return None
        first = self.clients[0]
        return ClientSpec(
            name=self.noisy_client_name,
            domain_mix={b: 1.0 for b in self.benchmarks},
            style="digits",
            rm_arch="light",
            label_noise=self.noisy_flip_share,
            n_pairs_train=first.n_pairs_train,
            n_pairs_test=first.n_pairs_test,
        )

    def all_clients(self) -> list[ClientSpec]:
        """Training clients, then the noisy client, then the held-out client (generation order)."""
        out = list(self.clients)
        noisy = self.noisy_spec()
        if noisy is not None:
            out.append(noisy)
        if self.held_out_client is not None:
            out.append(self.held_out_client)
        return out

    def domain_styles(self) -> dict[str, str]:
        """benchmark -> the style of the first training client whose home it is (benchmarks no
        training client calls home are left out)."""
        out: dict[str, str] = {}
        for c in self.clients:
            out.setdefault(c.home, c.style)
        return out

    def server_oracle_styles(self) -> dict[str, str]:
        """The per-benchmark styles the server oracle rewards ({} when router_pair_styles is neutral)."""
        return self.domain_styles() if self.router_pair_styles == "domain" else {}

    def server_counts(self, total: int) -> dict[str, int]:
        """Split a server-side count evenly over the benchmarks (largest remainder)."""
        return largest_remainder({b: 1.0 for b in self.benchmarks}, total)

    @model_validator(mode="after")
    def _consistent(self) -> WorldConfig:
        named = [("clients", i, c) for i, c in enumerate(self.clients)]
        if self.held_out_client is not None:
            named.append(("held_out_client", None, self.held_out_client))
        seen: dict[str, str] = {}
        if self.noisy_client:
            seen[self.noisy_client_name] = "noisy_client_name"
        for field, i, c in named:
            where = field if i is None else f"{field}[{i}]"
            if c.name in seen:
                raise ValueError(f"{where}.name: duplicate client name {c.name!r} (also {seen[c.name]})")
            seen[c.name] = f"{where}.name"
            missing = [b for b in c.domain_mix if b not in self.benchmarks]
            if missing:
                raise ValueError(
                    f"{where}.domain_mix: benchmark(s) {missing} are not in benchmarks {list(self.benchmarks)}"
                )
        self._check_capacity()
        return self

    def _check_capacity(self) -> None:
        """Client pairs, pool and router pairs use disjoint train examples; test pairs fit each test split."""
        demand = {b: 0 for b in self.benchmarks}
        for c in self.all_clients():
            for b, n in c.pairs_per_benchmark("train").items():
                demand[b] += n
            for b, n in c.labelled_per_benchmark().items():
                demand[b] += n
            for b, n in c.pairs_per_benchmark("test").items():
                if n > self.benchmarks[b].test:
                    raise ValueError(
                        f"benchmarks.{b}.test: {self.benchmarks[b].test} examples < {n} test pairs of client {c.name!r}"
                    )
        for b, n in self.server_counts(self.prompt_pool_size).items():
            demand[b] += n
        for b, n in self.server_counts(self.router_pairs_size).items():
            demand[b] += n
        for b, n in demand.items():
            if n > self.benchmarks[b].train:
                raise ValueError(
                    f"benchmarks.{b}.train: {self.benchmarks[b].train} examples < {n} needed "
                    "(client train pairs + labelled examples + prompt_pool_size + router_pairs_size, one example each)"
                )

    @classmethod
    def small(cls, seed: int = 0, **overrides: object) -> WorldConfig:
        """A tiny world (seconds to make) for tests and quick demos."""
        base: dict[str, object] = {
            "seed": seed,
            "image_size": 32,
            "benchmarks": {b: {"train": 120, "test": 40} for b in BENCHMARK_NAMES},
            "clients": [
                c.model_copy(update={"n_pairs_train": 40, "n_pairs_test": 20, "n_labelled": 12})
                for c in default_clients()
            ],
            "held_out_client": default_held_out().model_copy(
                update={"n_pairs_train": 30, "n_pairs_test": 20}
            ),
            "prompt_pool_size": 30,
            "router_pairs_size": 24,
        }
        base.update(overrides)
        return cls.model_validate(base)
