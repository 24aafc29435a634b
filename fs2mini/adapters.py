"""Injecting LoRA adapters into a model, saving them apart from the frozen weights and loading them back.

Only a run with `--lora.rank` > 0 imports this (and `peft`); the config, its checks and the merge that every
reader of such a run needs are in `fs2mini.lora`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from fs2mini.errors import UserError
from fs2mini.lora import ADAPTER_NAME, PEFT_BASE, LoraConfig, check_lora_targets, linear_widths


def add_adapters(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """`model` with an adapter on each targeted linear layer and every other weight frozen (in place)."""
    check_lora_targets(cfg, linear_widths(model))
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model
    except ImportError:
        raise UserError("--lora.rank needs peft; expected `pip install 'fs2mini[lora]'`") from None
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.targets))
    return inject_adapter_in_model(peft_cfg, model, adapter_name=ADAPTER_NAME)


def split_adapters(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A peft-injected model's state dict as (frozen weights under plain names, adapter tensors)."""
    weights, adapters = {}, {}
    for name, tensor in state.items():
        if ".lora_" in name:
            adapters[name] = tensor
        else:
            weights[name.replace(PEFT_BASE, "")] = tensor
    return weights, adapters


def adapter_state(state: dict[str, Tensor], cfg: LoraConfig) -> dict[str, Any]:
    """What a checkpoint keeps under `LORA`: the settings and the adapters."""
    return {"rank": cfg.rank, "alpha": cfg.alpha, "weights": state}


def load_adapters(model: nn.Module, lora: dict[str, Any]) -> None:
    """Load a checkpoint's `LORA` entry into a peft-injected `model` whose frozen weights are loaded (a resume)."""
    missing, unexpected = model.load_state_dict(lora["weights"], strict=False)
    missing = [name for name in missing if ".lora_" in name]
    if missing or unexpected:
        raise UserError(f"the checkpoint's LoRA adapters do not fit the configured model "
                        f"({(missing or unexpected)[0]}); expected the --lora settings it was trained with")
