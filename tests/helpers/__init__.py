"""Helpers shared by the tests (importable as ``helpers`` because pytest puts tests/ on ``sys.path``).

- :mod:`helpers.raw_layouts`: the datasets' download layouts, written small and synthetic;
- :mod:`helpers.tiny_trainers`: a hand-written tiny 3d_fullres plan and trainers built from it in process;
- :mod:`helpers.nnunet_integrity`: nnU-Net's own dataset integrity check on a converted dataset;
- :mod:`helpers.pretrained_setup`: the tiny pre-train/fine-tune workflow behind the ``pretrained_setup`` fixture;
- ``compiled_trainers/``: trainer variants that compile as on a GPU (a folder for ``nnUNet_extTrainer``).
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"  # real data for tests; absent on a machine without it
COMPILED_TRAINERS = Path(__file__).resolve().parent / "compiled_trainers"
