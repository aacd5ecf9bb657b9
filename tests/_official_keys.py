"""State-dict key lists in the format of the official reference files (tests/reference/)."""
from pathlib import Path

REFERENCE = Path(__file__).parent / "reference"


def key_lines(state_dict):
    """Format as the reference files: ``name (d0, d1, ...)``, ``(d,)`` for 1-d."""
    def shape(t):
        dims = tuple(t.shape)
        return "(" + ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "") + ")"
    return [f"{k} {shape(v)}" for k, v in state_dict.items()]


def read_reference(path):
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
