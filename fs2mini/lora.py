"""LoRA adapters (through `peft`) for fine-tuning big models in little memory, and merging them back.

Why: full fine-tuning of NLLB-600M keeps fp32 gradients and two AdamW moments for every weight
(~12 GiB on a CPU); with low-rank adapters on the attention and feed-forward projections only the
adapters train, so the optimizer state and gradients shrink to a few MB. `peft` injects them into
fs2mini's own `nn.Linear` layers (`inject_adapter_in_model`), which also freezes every other weight.

This module holds what every reader of a LoRA run needs: its config, its checks, and the merge. Injecting
and saving adapters, which only a LoRA training does, is in `fs2mini.adapters`.

A checkpoint of such a run keeps the frozen weights under plain names in `MODEL` and the adapters
under `LORA` (`adapters.split_adapters`; fs2mini/checkpoint.py), so a resume restores both exactly; every reader of a checkpoint
(translate, evaluate, average, export, `--init`) takes `model_weights(checkpoint)`: the adapters
merged into their layers, W + (alpha / rank) · B A, the plain model a run without LoRA would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from fs2mini.checkpoint import LORA, MODEL
from fs2mini.errors import UserError

ADAPTER_NAME = "default"
PEFT_BASE = ".base_layer"
_A, _B = f".lora_A.{ADAPTER_NAME}.weight", f".lora_B.{ADAPTER_NAME}.weight"


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the model's linear layers (rank 0: off, every weight trains)."""

    rank: int = 0
    """Rank of each adapter (8 or 16 are usual); 0 trains every weight instead."""
    alpha: float = 16.0
    """Scale of the adapters' output: alpha / rank (peft's lora_alpha)."""
    dropout: float = 0.0
    """Dropout on the adapters' input."""
    targets: tuple[str, ...] = ("qkv_proj", "q_proj", "kv_proj", "out_proj", "inner_proj")
    """Names of the nn.Linear modules that get an adapter (fs2mini's attention and FFN projections)."""


def check_lora_config(cfg: LoraConfig) -> None:
    if cfg.rank < 0:
        raise UserError(f"--lora.rank must be >= 0 (0 disables LoRA), got {cfg.rank}")
    if cfg.rank and not cfg.alpha > 0:
        raise UserError(f"--lora.alpha must be > 0, got {cfg.alpha}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"--lora.dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.rank and not cfg.targets:
        raise UserError("--lora.targets is empty; expected names of linear layers such as qkv_proj out_proj")


def linear_widths(model: nn.Module) -> dict[str, int]:
    """The names (last component) of `model`'s nn.Linear layers, each with its narrowest width (in or out)."""
    widths: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            leaf = name.rsplit(".", 1)[-1]
            widths[leaf] = min(widths.get(leaf, module.in_features), module.in_features, module.out_features)
    return widths


def check_lora_targets(cfg: LoraConfig, linears: dict[str, int]) -> None:
    """Refuse adapters that would change nothing: `linears` maps the model's nn.Linear names to their narrowest width."""
    targeted = [width for name, width in linears.items() if name in cfg.targets]
    if not targeted:
        raise UserError(f"--lora.targets {' '.join(cfg.targets)}: no linear layer of the model has these names, so LoRA "
                        f"would change nothing; expected some of: {' '.join(sorted(linears)) or '(the model has no nn.Linear)'}")
    if cfg.rank >= min(targeted):
        raise UserError(f"--lora.rank {cfg.rank} is not below the narrowest targeted layer ({min(targeted)}), so the "
                        f"adapters would be as large as the layers; expected a rank < {min(targeted)} (8 or 16 are usual)")


def model_weights(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The plain model's weights in a checkpoint: its `MODEL`, with any LoRA adapters merged in."""
    lora = checkpoint.get(LORA)
    if not lora:
        return checkpoint[MODEL]
    scaling = float(lora["alpha"]) / int(lora["rank"])
    merged = dict(checkpoint[MODEL])
    for name, a in lora["weights"].items():
        if name.endswith(_A):
            module = name.removesuffix(_A)
            b = lora["weights"][module + _B]
            weight = merged[f"{module}.weight"]
            merged[f"{module}.weight"] = (weight.float() + scaling * (b.float() @ a.float())).to(weight.dtype)
    return merged
