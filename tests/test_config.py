"""Settings: one TOML file, validated into typed settings with errors that name the bad `section.key`."""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import (
    RULES,
    Range,
    Settings,
    find_config,
    load_settings,
    settings_from_dict,
    settings_to_dict,
    settings_to_toml,
)
from agent.errors import ConfigError
from tests.support.data import REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "faceagent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def known_keys() -> dict[str, list[str]]:
    return {s.name: [f.name for f in fields(getattr(Settings(), s.name))] for s in fields(Settings)}


def test_no_file_gives_working_defaults() -> None:
    assert load_settings(None) == Settings()


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == Settings()


def test_values_are_typed_and_ints_widen_to_floats(tmp_path: Path) -> None:
    loaded = load_settings(write(tmp_path, "[gallery]\nthreshold = 1\nmetric = 'cosine'\n[models]\nthreads = 4\n"))
    assert loaded.gallery.threshold == 1.0 and isinstance(loaded.gallery.threshold, float)
    assert (loaded.gallery.metric, loaded.models.threads) == ("cosine", 4)


def test_relative_paths_are_taken_from_the_file_folder(tmp_path: Path) -> None:
    loaded = load_settings(write(tmp_path, '[gallery]\npath = "data/g.db"\n[models]\ndir = "/opt/models"\n'))
    assert loaded.gallery.path == tmp_path.resolve() / "data" / "g.db"
    assert loaded.models.dir == Path("/opt/models")


def test_empty_string_unsets_an_optional(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, '[models]\nembedder = ""\n')).models.embedder is None


def test_wrong_type_names_the_key_and_the_value(tmp_path: Path) -> None:
    message = 'gallery.threshold: must be a number greater than 0 and at most 4, got "high"'
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(write(tmp_path, '[gallery]\nthreshold = "high"\n'))


def test_out_of_range_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models\.threads: must be an integer between 1 and 64, got 0"):
        load_settings(write(tmp_path, "[models]\nthreads = 0\n"))


def test_adaptation_needs_a_distance_window(tmp_path: Path) -> None:
    message = "gallery.adapt_min_distance: must be below gallery.adapt_max_distance (0.2), got 0.3"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(write(tmp_path, "[gallery]\nadapt_min_distance = 0.3\nadapt_max_distance = 0.2\n"))


def test_a_float_is_not_an_integer(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tracking\.max_age_frames: must be an integer .* got 2\.5"):
        load_settings(write(tmp_path, "[tracking]\nmax_age_frames = 2.5\n"))


def test_a_boolean_is_not_a_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gallery\.margin: .* got true"):
        load_settings(write(tmp_path, "[gallery]\nmargin = true\n"))


def test_nan_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gallery\.margin: .* got nan"):
        load_settings(write(tmp_path, "[gallery]\nmargin = nan\n"))


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'gallery\.treshold: unknown key .*did you mean "threshold"\?'):
        load_settings(write(tmp_path, "[gallery]\ntreshold = 0.5\n"))


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'retension: unknown section .*did you mean "retention"'):
        load_settings(write(tmp_path, "[retension]\nevents_days = 3\n"))


def test_a_section_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gallery: must be a table \(\[gallery\]\), got 3"):
        load_settings(write(tmp_path, "gallery = 3\n"))


def test_choices_are_listed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'gallery\.metric: must be one of "euclidean", "cosine", got "manhattan"'):
        load_settings(write(tmp_path, '[gallery]\nmetric = "manhattan"\n'))


def test_camera_id_must_be_topic_safe(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"events\.camera_id: must be 1-64 letters"):
        load_settings(write(tmp_path, '[events]\ncamera_id = "front/door"\n'))


def test_home_assistant_names_are_readable_text(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[homeassistant]\ndevice_name = "Front door"\narea = "Hallway"\n'))
    assert (settings.homeassistant.device_name, settings.homeassistant.area) == ("Front door", "Hallway")


def test_a_home_assistant_name_with_a_control_character_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"homeassistant\.device_name: must be 1-64 printable characters"):
        load_settings(write(tmp_path, '[homeassistant]\ndevice_name = "Front\\ndoor"\n'))


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="2 problems") as caught:
        load_settings(write(tmp_path, "[models]\nthreads = 0\n[gallery]\nmargin = -1\n"))
    assert "models.threads" in str(caught.value) and "gallery.margin" in str(caught.value)


def test_the_file_name_is_in_the_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[models]\nthreads = 0\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_settings(path)


def test_bad_toml_gives_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2"):
        load_settings(write(tmp_path, "[gallery]\nthreshold = = 1\n"))


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_an_explicit_file_wins_over_the_default(tmp_path: Path) -> None:
    assert find_config(tmp_path / "mine.toml") == tmp_path / "mine.toml"


def test_every_number_has_a_range_and_every_rule_a_field() -> None:
    defaults = Settings()
    numbers = {
        f"{section}.{key}"
        for section, keys in known_keys().items()
        for key in keys
        if type(getattr(getattr(defaults, section), key)) in (int, float)
    }
    assert numbers <= {key for key, rule in RULES.items() if isinstance(rule, Range)}
    assert set(RULES) <= {f"{s}.{k}" for s, keys in known_keys().items() for k in keys}


def test_defaults_obey_their_own_rules() -> None:
    explicit = {
        s: {k: v for k, v in values.items() if v is not None} for s, values in settings_to_dict(Settings()).items()
    }
    assert settings_from_dict(explicit) == Settings()


def test_effective_settings_print_as_toml_that_loads_back(tmp_path: Path) -> None:
    custom = load_settings(
        write(tmp_path, '[gallery]\nthreshold = 0.45\npath = "/x/g.db"\n[events]\ncamera_id = "door"\n')
    )
    assert settings_from_dict(tomllib.loads(settings_to_toml(custom))) == custom


def test_the_example_file_documents_every_key_with_its_default() -> None:
    example = tomllib.loads((REPO / "faceagent.example.toml").read_text(encoding="utf-8"))
    assert {s: sorted(keys) for s, keys in example.items()} == {s: sorted(k) for s, k in known_keys().items()}
    assert settings_from_dict(example) == Settings(), "faceagent.example.toml lags the defaults in agent/config.py"


# ------------------------------------------------------------------------------------ property


_scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.booleans(),
    st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    st.dates(),
    st.times(),
)
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner), max_leaves=4
)


@st.composite
def toml_documents(draw: st.DrawFn) -> dict:
    keys = known_keys()
    sections = st.sampled_from([*keys, "extra", ""]) | st.text(max_size=8)
    document: dict = {}
    for section in draw(st.lists(sections, max_size=4)):
        section_keys = st.sampled_from(keys.get(section, ["x"])) | st.text(max_size=8)
        document[section] = draw(st.dictionaries(section_keys, _values, max_size=4) | _scalars)
    return document


@given(toml_documents())
@settings(max_examples=300, deadline=None)
def test_any_document_gives_settings_or_a_config_error(document: dict) -> None:
    try:
        loaded = settings_from_dict(document, base_dir=Path("/etc/faceagent"))
    except ConfigError as exc:
        assert str(exc).startswith("config: ")
        return
    assert isinstance(loaded, Settings)
    for section in fields(Settings):
        values = getattr(loaded, section.name)
        for field in fields(values):
            default = getattr(getattr(Settings(), section.name), field.name)
            value = getattr(values, field.name)
            assert value is None or default is None or type(value) is type(default) or isinstance(value, Path)
