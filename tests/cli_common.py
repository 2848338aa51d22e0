"""What the command-line tests share: the tiny sweeps and a ``jaxtune`` subprocess that runs the
code of this checkout."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY = """\
[task]
dataset = "synthetic"
widths = [8]

[optimizer]
name = "momentum"
momentum = 0.9
clip_norm = 1.0

[train]
steps = 20
eval_every = 10
batch_size = 32

[checkpoint]
every = 10

[sweep.grid]
"optimizer.learning_rate" = [0.05, 0.5]
"train.batch_size" = [16, 32]
"""

# In-process sweep: one trial diverges (huge learning rate, no clipping).
INPROC = {
    "task": {"dataset": "synthetic", "widths": [8]},
    "optimizer": {"name": "sgd"},
    "train": {"steps": 20, "eval_every": 10, "batch_size": 32},
    "checkpoint": {"every": 10},
    "sweep": {"grid": {"optimizer.learning_rate": [0.1, 1e6]}},
}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m jaxtune.cli ARGS`` importing this checkout's ``jaxtune`` (whatever is
    installed), with its output captured."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "jaxtune.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
