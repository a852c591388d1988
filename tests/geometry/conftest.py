import sys
from pathlib import Path

# --import-mode=importlib does not put the repo root on sys.path.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
