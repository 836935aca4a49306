import sys
from pathlib import Path

# tests/reference/ (the oracle) is imported as a plain package by the tests beside it.
sys.path.insert(0, str(Path(__file__).resolve().parent))
