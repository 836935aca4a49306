import sys
from pathlib import Path

# tests/reference.py (the oracle) is imported as a plain module by the tests beside it.
sys.path.insert(0, str(Path(__file__).resolve().parent))
