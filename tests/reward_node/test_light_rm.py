"""The light RM's image pathways: the question-conditioned cells (default) and the flat map of older checkpoints."""
from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from services.reward_node.rm.light import CELLS_WIDTHS, FIRST_CELLS_WIDTHS, ImageCells, ImageCNN, LightRM


def _picture(colour: str, box: tuple[int, int, int, int]) -> Image.Image:
    im = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(im).rectangle(box, fill=colour)
    return im


def _model(pathway: str) -> LightRM:
    torch.manual_seed(0)
    return LightRM(pathway=pathway).eval()


def test_cells_score_each_sample_as_if_it_were_alone() -> None:
    """Samples sharing an image and a prompt are read once; the scores equal one-at-a-time scoring."""
    rm = _model("cells")
    red, blue = _picture("red", (8, 8, 24, 24)), _picture("blue", (30, 30, 50, 50))
    prompts = ["What colour is the square?", "What colour is the square?", "Is it left?", "What colour is the square?"]
    images = [red, red, red, blue]
    answers = ["red", "blue", "yes", "blue"]
    with torch.no_grad():
        together = rm.raw_scores(rm.prepare(prompts, images, answers))
        alone = torch.cat([rm.raw_scores(rm.prepare([p], [i], [a])) for p, i, a in zip(prompts, images, answers, strict=True)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_cells_read_the_image_with_the_question_and_flat_does_not() -> None:
    image = _picture("green", (10, 20, 30, 40))
    prompts = ["What colour is the square?", "How many shapes are there?"]
    for pathway, question_dependent in (("cells", True), ("flat", False)):
        rm = _model(pathway)
        with torch.no_grad():
            v = rm.image_features(rm.prepare(prompts, [image, image], ["green", "green"]))
        assert v.shape == (2, rm.image_dim)
        assert (not torch.allclose(v[0], v[1])) is question_dependent, pathway


def test_architecture_names_the_pathway_and_older_checkpoints_load_flat() -> None:
    cells = _model("cells")
    assert cells.architecture()["pathway"] == "cells" and isinstance(cells.cnn, ImageCells)
    rebuilt = LightRM.from_architecture(cells.architecture())
    assert rebuilt.load_state_dict(cells.state_dict()) is not None and isinstance(rebuilt.cnn, ImageCells)

    older = {k: v for k, v in _model("flat").architecture().items() if k != "pathway"}  # written before cells
    flat = LightRM.from_architecture(older)
    assert flat.pathway == "flat" and isinstance(flat.cnn, ImageCNN)
    flat.load_state_dict(_model("flat").state_dict())


def test_an_unknown_pathway_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="pathway"):
        LightRM(pathway="patches")


def test_cells_widths_round_trip_and_checkpoints_without_them_load_the_first_widths() -> None:
    narrow = LightRM(widths=(8, 16, 16, 16))
    arch = narrow.architecture()
    assert arch["widths"] == [8, 16, 16, 16]
    LightRM.from_architecture(arch).load_state_dict(narrow.state_dict())  # strict: the same shapes
    assert LightRM().widths == CELLS_WIDTHS != FIRST_CELLS_WIDTHS
    first = LightRM(widths=FIRST_CELLS_WIDTHS)
    older = {k: v for k, v in first.architecture().items() if k != "widths"}  # written before widths existed
    LightRM.from_architecture(older).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="widths"):
        LightRM(widths=(16, 32, 32))
