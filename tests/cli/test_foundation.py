"""Stock nnU-Net CLI discovery of our trainers (one class identity) and the nnunet-covid CLI itself."""
import subprocess
import sys
from pathlib import Path

import pytest

import nnunet_covid.training as training
from nnunet_covid.core.nnunet_conventions import ext_trainer_dir

PRODUCT_TRAINERS = [
    "MultiLesionPretrainTrainer", "MultiLesionPartialLabelTrainer", "ContinualLearningTrainer",
    "BodyFineTuneTrainer", "FrozenEncoderTrainer", "HybridEncoderTrainer", "NCoVSegNetTrainer",
]


def test_every_named_trainer_is_exported():
    missing = [name for name in PRODUCT_TRAINERS if name not in training.__all__]
    assert not missing, f"not exported from nnunet_covid.training: {missing}"


@pytest.mark.parametrize("name", sorted(set(training.__all__) & set(dir(training))))
def test_nnunet_lookup_finds_the_same_class(name, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = getattr(training, name)
    if not (isinstance(cls, type) and issubclass(cls, nnUNetTrainer)):
        pytest.skip(f"{name} is not a trainer")
    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_dir())
    assert recursive_find_trainer_class_by_name(name) is cls
    # the shim module is dropped from sys.modules again, our package stays
    assert "nnunet_covid_trainers" not in sys.modules


def test_ext_path_cli_prints_the_shim_folder():
    out = subprocess.run(["nnunet-covid", "ext-path"], capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out) == Path(ext_trainer_dir())
    assert (Path(out) / "nnunet_covid_trainers.py").is_file()
    exported = subprocess.run(["nnunet-covid", "ext-path", "--export"], capture_output=True, text=True,
                              check=True).stdout.strip()
    assert exported == f"export nnUNet_extTrainer={out}"


def test_every_subcommand_has_help():
    from nnunet_covid.cli import SUBCOMMANDS

    for name in SUBCOMMANDS:
        result = subprocess.run(["nnunet-covid", name, "--help"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "usage: nnunet-covid " + name in result.stdout
