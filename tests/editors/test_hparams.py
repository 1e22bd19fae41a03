import dataclasses

import pytest

from editors.hparams import Hparams, HparamsError, load_yaml, parse_overrides


@dataclasses.dataclass(frozen=True)
class HP(Hparams):
    lr: float = 0.1
    steps: int = 10
    layers: tuple[int, ...] = (1, 2)
    name: str = "x"
    flag: bool = False
    mode: str | None = None


def write(tmp_path, text):
    p = tmp_path / "h.yaml"
    p.write_text(text)
    return p


def test_scientific_notation_is_a_float(tmp_path):
    hp = HP.from_yaml(write(tmp_path, "lr: 5e-1\nsteps: 3\nlayers: [7, 8]\n"))
    assert hp.lr == 0.5 and isinstance(hp.lr, float)
    assert hp.layers == (7, 8)
    assert load_yaml(write(tmp_path, "a: 1e7"))["a"] == 1e7


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    p = write(tmp_path, "lrr: 0.1\n")
    with pytest.raises(HparamsError) as err:
        HP.from_yaml(p)
    assert "'lrr'" in str(err.value) and str(p) in str(err.value) and "did you mean 'lr'" in str(err.value)


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "steps: 2.5\n")
    with pytest.raises(HparamsError, match=r"key 'steps'.*integer"):
        HP.from_yaml(p)
    with pytest.raises(HparamsError, match=r"key 'flag'"):
        HP.from_yaml(write(tmp_path, "flag: 1\n"))


def test_quoted_number_is_an_error_not_a_silent_coercion(tmp_path):
    p = write(tmp_path, 'lr: "5e-1"\n')
    with pytest.raises(HparamsError, match=r"key 'lr'.*string '5e-1'"):
        HP.from_yaml(p)


def test_malformed_yaml(tmp_path):
    with pytest.raises(HparamsError, match="malformed YAML"):
        HP.from_yaml(write(tmp_path, "lr: [1, 2\n"))


def test_frozen_and_overrides():
    hp = HP.from_dict(parse_overrides("lr=1e-3,layers=[1,2,3],name=abc"))
    assert (hp.lr, hp.layers, hp.name) == (1e-3, (1, 2, 3), "abc")
    with pytest.raises(dataclasses.FrozenInstanceError):
        hp.lr = 2.0  # type: ignore[misc]
    with pytest.raises(HparamsError):
        parse_overrides("novalue")
