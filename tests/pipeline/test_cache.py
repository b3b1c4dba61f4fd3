"""The pipeline's one artefact-cache rule (services/pipeline/cache.py): an artefact is reused iff the
record written after it completed holds the digest of the inputs asked for now."""
from __future__ import annotations

import json

import pytest

from services.pipeline import cache


def test_record_matches_only_the_recorded_inputs_of_an_existing_artefact(tmp_path):
    artefact = tmp_path / "policy"
    inputs = {"world": "ab12", "sft": {"steps": 3}}
    artefact.mkdir()
    assert not cache.current(artefact, inputs)  # never recorded

    cache.complete(artefact, inputs)
    assert cache.current(artefact, {"sft": {"steps": 3}, "world": "ab12"})
    assert not cache.current(artefact, {**inputs, "world": "cd34"})
    assert not cache.current(tmp_path / "other", inputs)  # record of another artefact

    cache.record_path(artefact).write_text("{not json")
    assert not cache.current(artefact, inputs)
    cache.complete(artefact, inputs)
    cache.begin(artefact)  # a rebuild starts by removing the record
    assert not cache.current(artefact, inputs)


def test_ensure_builds_once_then_reuses_and_rebuilds_stale_or_partial_artefacts(tmp_path):
    out = tmp_path / "rm"
    builds = []

    def build(tag: str):
        def make() -> None:
            builds.append(tag)
            out.mkdir()
            (out / "weights").write_text(tag)
        return make

    assert cache.ensure(out, {"lr": 1}, build("a"))
    assert not cache.ensure(out, {"lr": 1}, build("b"))  # current: reused
    assert builds == ["a"]
    assert cache.ensure(out, {"lr": 2}, build("c"))  # stale: the old folder goes, then the build
    assert (out / "weights").read_text() == "c"

    def interrupted() -> None:
        out.mkdir()
        (out / "weights").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.ensure(out, {"lr": 3}, interrupted)
    assert out.exists() and not cache.record_path(out).exists()  # partial: no record
    assert cache.ensure(out, {"lr": 3}, build("d"))
    assert (out / "weights").read_text() == "d" and builds == ["a", "c", "d"]


def test_record_is_written_whole_and_holds_the_inputs(tmp_path):
    out = tmp_path / "world"
    out.mkdir()
    cache.complete(out, {"world": {"seed": 1}, "paths": (tmp_path,)})
    record = json.loads(cache.record_path(out).read_text())
    assert record["digest"] == cache.digest({"world": {"seed": 1}, "paths": [str(tmp_path)]})
    assert record["inputs"]["world"] == {"seed": 1}
    assert {p.name for p in tmp_path.iterdir()} == {"world", "world.inputs.json"}  # no temporary file left


def test_content_hash_follows_content_not_file_times_or_place(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "sub").mkdir(parents=True)
        (d / "x.bin").write_bytes(b"weights")
        (d / "sub" / "y.json").write_text("{}")
    assert cache.content_hash(a) == cache.content_hash(b)
    assert cache.content_hash(a / "x.bin") == cache.content_hash(b / "x.bin")
    (b / "sub" / "y.json").write_text('{"other": 1}')
    assert cache.content_hash(a) != cache.content_hash(b)
    with pytest.raises(FileNotFoundError):
        cache.content_hash(tmp_path / "missing")
