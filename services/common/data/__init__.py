"""The synthetic federated VQA world: config, generators, records, answers/metrics, oracles, world I/O.

Public entry points (import from the submodules; this package file re-exports the common ones):
  WorldConfig, ClientSpec                  config.py
  load_world, World                        world.py        (format: FORMAT.md)
  make_world                               world_writer.py
  VQAExample, PreferencePair, PoolPrompt   records.py
  normalize_answer, extract_answer, vqa_accuracy, exact_match, format_ok, render_answer   answers.py
  ClientOracle, ServerOracle               oracle.py
  load_vqa                                 loaders.py
  corpus_texts                             corpus.py
  chance_level, CHANCE, benchmark_chance, blind_baseline   chance.py
"""

from .answers import exact_match, extract_answer, format_ok, normalize_answer, render_answer, vqa_accuracy
from .chance import CHANCE, benchmark_chance, blind_baseline, chance_level
from .config import ClientSpec, WorldConfig
from .loaders import LoaderError, load_vqa
from .oracle import ClientOracle, ServerOracle
from .records import PoolPrompt, PreferencePair, VQAExample
from .world import World, WorldFormatError, load_world
from .world_writer import make_world

__all__ = [
    "CHANCE",
    "ClientOracle",
    "ClientSpec",
    "LoaderError",
    "PoolPrompt",
    "PreferencePair",
    "ServerOracle",
    "VQAExample",
    "World",
    "WorldConfig",
    "WorldFormatError",
    "benchmark_chance",
    "blind_baseline",
    "chance_level",
    "exact_match",
    "extract_answer",
    "format_ok",
    "load_vqa",
    "load_world",
    "make_world",
    "normalize_answer",
    "render_answer",
    "vqa_accuracy",
]
