"""Make this checkout importable when roll is not pip-installed (pytest's default import mode only
puts the test folder on sys.path). Redundant once pyproject sets ``pythonpath = ["."]``."""

import sys
from pathlib import Path

_REPO_ROOT = str(Path(__file__).resolve().parents[3])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
