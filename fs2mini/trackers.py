"""Where a run's records go besides metrics.jsonl: TensorBoard (by default) and Weights & Biases (opt-in).

`RunLog` has the one method the loop calls, `write(record)`: the record goes to `metrics.jsonl`
(the source of truth, which `fs2mini.plot` reads) and, as scalars named `SPLIT/FIELD`
(`train/loss`, `valid/bleu`, ...), to `torch.utils.tensorboard`'s `SummaryWriter` in RUN_DIR/tb and
to a W&B run. A resumed run hides the TensorBoard events logged after its checkpoint
(`purge_step`), as `MetricsLog` drops those lines, so each step is drawn once. W&B is imported only
when `--trainer.wandb-project` is set; its run id is kept in the checkpoints (`TrainState`), so a
resumed run continues the same W&B run (W&B keeps the points it already had for the redone steps).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fs2mini.config import TrainConfig, config_to_json
from fs2mini.errors import UserError
from fs2mini.metrics import MetricsLog
from fs2mini.rundir import METRICS_FILE, TENSORBOARD_DIR



class RunLog:
    """metrics.jsonl plus the trackers the config asks for; `write` sends each record to all of them."""

    def __init__(self, cfg: TrainConfig, resume_step: int, wandb_run_id: str | None) -> None:
        run_dir = cfg.run_dir
        self.metrics = MetricsLog(run_dir / METRICS_FILE, resume_step=resume_step)
        self.tensorboard = None
        self.wandb = None
        if cfg.trainer.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when asked for

            # Events of steps after the checkpoint (a run killed past it) are hidden from then on; a run that starts
            # over (killed before its first checkpoint) validates step 0 again, so it hides them all, as MetricsLog does.
            self.tensorboard = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=resume_step + 1 if resume_step else 0,
                                             flush_secs=30)
        if cfg.trainer.wandb_project is not None:
            self.wandb = _start_wandb(cfg, wandb_run_id)

    @property
    def wandb_run_id(self) -> str | None:
        return self.wandb.id if self.wandb is not None else None

    def write(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)
        scalars = {f"{record['split']}/{key}": float(value) for key, value in record.items()
                   if key not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool)
                   and math.isfinite(value)}
        if self.tensorboard is not None:
            for tag, value in scalars.items():
                self.tensorboard.add_scalar(tag, value, record["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        self.metrics.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(cfg: TrainConfig, run_id: str | None) -> Any:
    try:
        import wandb
    except ImportError:
        raise UserError(f"--trainer.wandb-project {cfg.trainer.wandb_project}: cannot import wandb; "
                        "expected `pip install wandb`") from None
    return wandb.init(project=cfg.trainer.wandb_project, name=cfg.run_name, id=run_id or wandb.util.generate_id(),
                      resume="allow", dir=str(Path(cfg.run_dir)), config=config_to_json(cfg))
