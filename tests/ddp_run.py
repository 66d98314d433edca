"""Run under torchrun by tests/test_engine.py: train each job of a JSON spec (preset + overrides) on every rank.

A job may name `rank1_out_dir` (rank 1 trains under another out_dir, so any file it wrote would show there) and
`die_at_step` (rank 1 raises in that step, as a crashed process would)."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlcv.config import apply_overrides  # noqa: E402
from dlcv.presets import get_preset  # noqa: E402
from dlcv.training import FAMILIES, train  # noqa: E402


def main() -> None:
    rank = int(os.environ["RANK"])
    for job in json.loads(Path(sys.argv[1]).read_text()):
        overrides = list(job["overrides"])
        if rank == 1 and job.get("rank1_out_dir"):
            overrides.append(f"--train.out_dir={job['rank1_out_dir']}")
        cfg = apply_overrides(get_preset(job["preset"]), overrides)
        family = FAMILIES[cfg.family]
        if rank == 1 and job.get("die_at_step"):
            update = family.update

            def dies(self, step, batches, _update=update, _at=job["die_at_step"]):
                if step + 1 == _at:
                    raise RuntimeError(f"simulated crash in step {_at}")
                return _update(self, step, batches)

            family.update = dies
        train(cfg, out=job.get("out"))


if __name__ == "__main__":
    main()
