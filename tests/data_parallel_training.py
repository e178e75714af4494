"""Medusa-1 and Medusa-2 training runs shared by ``test_scale_out``: one process or torchrun.

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/data_parallel_training.py
DATA OUT`` trains both kinds into ``OUT/medusa1`` and ``OUT/medusa2``; the test runs
:func:`train_both` in its own process too and compares the loss curves. LoRA dropout
is 0 here: its masks are drawn per rank, so with dropout the curves agree only in
distribution.
"""

from __future__ import annotations

import sys
from pathlib import Path

from treeopt.model.train_heads import JointSettings, TrainSettings, train_heads_from

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
MEDUSA1 = TrainSettings(num_heads=2, epochs=2, batch_size=4, max_new_tokens=12)
MEDUSA2 = TrainSettings(num_heads=2, epochs=1, batch_size=4, max_new_tokens=12,
                        joint=JointSettings(backbone_loss="distill", warmup_steps=1,
                                            lora_rank=4, lora_alpha=8, lora_dropout=0.0))


def train_both(data: Path, out: Path) -> None:
    """Train both kinds on ``data`` with the targets cache in ``out/cache``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, settings in (("medusa1", MEDUSA1), ("medusa2", MEDUSA2)):
        train_heads_from(str(STORIES), str(data), out / name, settings, progress=False,
                         targets_cache=out / "cache")


if __name__ == "__main__":
    train_both(Path(sys.argv[1]), Path(sys.argv[2]))
