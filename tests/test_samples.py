"""The files the package ships for its own use are found where it runs from (a source checkout here)."""

from agent.cli.demo import CLIP_NAME, bundled_clip
from agent.modelupdate.check import CLIP, sample_file


def test_the_demo_finds_its_clip() -> None:
    assert bundled_clip().name == CLIP_NAME
    assert bundled_clip().stat().st_size > 0


def test_a_model_update_check_finds_its_sample_clip() -> None:
    assert sample_file(CLIP).is_file()
