"""The package layers (pyproject.toml's import-linter contracts) hold: one import direction, no cycles."""
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint) if lint.is_file() else "lint-imports", "--no-cache"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout
