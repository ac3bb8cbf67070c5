"""Every converter test writes into its own ``nnUNet_raw`` (tmp_path/raw) with one worker process; a test or
fixture that needs another folder sets its own after this."""
import pytest


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
