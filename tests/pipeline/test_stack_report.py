"""The stack's table reuses the SFT's own per-example evaluation of the start when it fits."""
from __future__ import annotations

import json

from services.pipeline.sft import REPORT
from services.pipeline.stack import _sft_evaluation


def _report(tmp_path, after):
    tmp_path.joinpath(REPORT).write_text(json.dumps({"after": after}))
    return tmp_path


def test_the_sfts_evaluation_is_reused_only_per_example_and_on_the_same_examples(tmp_path):
    per_example = {"charts": {"id": ["c0"], "exact_match": [1.0], "preference": [0.5]}}
    fits = {"benchmarks": {"charts": {"n": 1, "exact_match": 1.0}}, "per_example": per_example}
    assert _sft_evaluation(_report(tmp_path, fits), 1) == fits
    assert _sft_evaluation(_report(tmp_path, fits), 2) is None  # another number of examples
    assert _sft_evaluation(_report(tmp_path, {"benchmarks": fits["benchmarks"]}), 1) is None  # an older report
    assert _sft_evaluation(_report(tmp_path, None), 1) is None
    tmp_path.joinpath(REPORT).write_text("{not json")
    assert _sft_evaluation(tmp_path, 1) is None
    assert _sft_evaluation(tmp_path / "missing", 1) is None
