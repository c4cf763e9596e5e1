import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Official fixtures live beside the project root (read-only, not in a user's clone).
FIXTURES = ROOT.parent / "shared" / "fixtures"
