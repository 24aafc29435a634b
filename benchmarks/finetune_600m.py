"""Memory and step time of fine-tuning NLLB dense_600m on this CPU (docs/nllb.md, "Fine-tuning: memory and time").

A randomly initialised model of the imported shape (NLLB-200's 256,206-token vocabulary, positions
offset by pad_idx + 1): the cost of a step does not depend on the weights, and nothing is
downloaded. One process per setting, so the peak resident memory is that setting's own.

    python benchmarks/finetune_600m.py --freeze none --batch 8 --length 32
    python benchmarks/finetune_600m.py --lora-rank 16 --activation-checkpointing
"""

import argparse
import dataclasses
import gc
import resource
import time
from pathlib import Path

import torch

from fs2mini.checkpoint import MODEL, load_checkpoint, load_weights, write_checkpoint
from fs2mini.data import Seq2SeqBatch
from fs2mini.adapters import add_adapters
from fs2mini.lora import LoraConfig
from fs2mini.model import ARCHS, enable_activation_checkpointing
from fs2mini.task import TaskConfig
from fs2mini.vocab import VocabInfo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--freeze", choices=["none", "embeddings", "encoder"], default="none")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=32, help="tokens per source and per target sentence")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank (fs2mini.lora); 0: none")
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute each layer in the backward")
    parser.add_argument("--from-checkpoint", type=Path, default=None,
                        help="start as --init does: write the weights to this file first, then build the model from it "
                             "memory-mapped (fs2mini.initialize + load_state_dict(assign=True))")
    args = parser.parse_args()
    torch.manual_seed(0)
    vocab = VocabInfo(256_206, pad_idx=1, bos_idx=0, eos_idx=2, unk_idx=3)
    cfg = dataclasses.replace(ARCHS["dense_600m"], position_offset=2, ffn_dropout_p=0.0)
    model = cfg.build(vocab).train()
    if args.from_checkpoint is not None:
        write_checkpoint(args.from_checkpoint, model.state_dict(), config={}, tokenizer=None, step=0)
        del model
        gc.collect()
        weights = load_checkpoint(args.from_checkpoint, mmap=True)[MODEL]
        model = cfg.build(vocab).train()
        load_weights(model, weights, f"--init {args.from_checkpoint}: its model", assign=True)
    if args.freeze in ("embeddings", "encoder"):
        model.embed.weight.requires_grad_(False)
    if args.freeze == "encoder":
        model.encoder_layers.requires_grad_(False)
        model.encoder_norm.requires_grad_(False)
    if args.lora_rank:
        model = add_adapters(model, LoraConfig(rank=args.lora_rank))
    if args.activation_checkpointing:
        enable_activation_checkpointing(model)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    task = TaskConfig().build(vocab)
    source = torch.randint(4, 256_000, (args.batch, args.length))
    target = torch.randint(4, 256_000, (args.batch, args.length + 1))
    batch = Seq2SeqBatch(source, torch.full((args.batch,), args.length), target[:, :-1], target[:, 1:],
                         args.batch * args.length)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss, n = task.compute_loss(model, batch)
        (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"from_checkpoint={args.from_checkpoint is not None} freeze={args.freeze} lora_rank={args.lora_rank} activation_checkpointing={args.activation_checkpointing} batch={args.batch}x{args.length} params={sum(p.numel() for p in model.parameters())/1e6:.0f}M "
          f"trained={trained/1e6:.0f}M threads={torch.get_num_threads()} step_s={' '.join(f'{t:.1f}' for t in times)} "
          f"peak_rss_gib={peak_gib:.1f}")


if __name__ == "__main__":
    main()
