import sys
from pathlib import Path

# tests/reference/ (the oracle, a package) is imported as a plain top-level package by the tests beside it.
sys.path.insert(0, str(Path(__file__).resolve().parent))
