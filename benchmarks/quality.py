"""Translation quality on equal terms: fs2mini vs Hugging Face M2M100, trained and decoded side by side.

    make quality                                               # both systems, 1200 updates each (~35 min on 2 cores)
    python benchmarks/quality.py --budget-minutes 18           # both systems, 18 minutes of training each
    python benchmarks/quality.py --budget-minutes 18 --fs2mini-recipe recipes/bible_budget.py \\
        --systems fs2mini hf hf-tuned                          # the recipe against HF's defaults and HF tuned
    python benchmarks/quality.py --budget-minutes 18 --fs2mini-recipe recipes/bible_budget.py \\
        --systems hf --label L                                 # add HF's defaults to label L's recipe run (its tokenizer)
    python benchmarks/quality.py --systems fs2mini --label no-attn-dropout \\
        --fs2mini-model.attention-dropout-p 0                  # one ablation, added to the JSON by its label

Both systems get the same things, so that only the model implementations differ: the offline Bible
split (KJV → Louis Segond, fs2mini's held-out books; `--task` picks another of `TASKS`: German, a
5k-verse subset, Basic English, Spanish), one sentencepiece tokenizer (8k unigram),
the same batches in the same order (fs2mini's pipeline, `--max-tokens` padded tokens per update),
the same shape (256 wide, 4+4 layers, FFN 1024, 4 heads), AdamW (lr 1e-3, betas 0.9/0.98, weight
decay 1e-4), inverse-sqrt schedule with 500 warmup steps, label smoothing 0.1, gradient clipping
at 1, fp32 (unless `--bf16`), and the same update: `fs2mini.trainer.train_step`, with each system's loss function (`--bf16` trains
both under bf16 autocast, decoding stays fp32).
Each system trains in its own process, one after the other (never concurrently), either for
`--updates` updates or for `--budget-minutes` of training. Then the test split (or `--split valid`)
is translated greedily and with beam 4, twice: length penalty 1.0 (HF's default) and 1.4 (fs2mini's)
(fs2mini: its `Translator`; Hugging Face: `model.generate` with the same
forced `</s> __fra__` start and the same maximum length 1.2 · source + 10) and scored with
sacreBLEU (13a): BLEU, chrF, n-gram precisions, brevity penalty, hyp/ref length ratio.

Two Hugging Face systems: `hf` is M2M100 as a HF user trains it by default (fp32, lr 1e-3), and
`hf-tuned` the same model with the two settings any HF user can change to match fs2mini's recipe: bf16
autocast where the CPU multiplies bf16 natively (as fs2mini's `--trainer.autocast auto`) and the
recipe's peak learning rate (`--hf-tuned-lr`, 1.5e-3 as `recipes/bible_budget.py`; warmup and batch are
the same for all). A quality claim names which of the two it beats. Every system trained under bf16
gets batch lengths in multiples of 8, as fs2mini's runs do (`fs2mini.data.shaped_for`; for HF that is
`DataCollatorForSeq2Seq(pad_to_multiple_of=8)`, which spares the CPU's bf16 kernels a compilation per shape).

Results are merged into `--output` (JSON) under `--label`, so ablations accumulate in one file; the
table printed at the end shows every labelled run in it. In budget mode `--systems` without fs2mini adds
Hugging Face systems to the label's recipe run made earlier: they train on its tokenizer with the same
settings (any other difference than the recipe's own flags is refused), and each records its machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import machine_info  # noqa: E402

from fs2mini.corpus import BibleCorpus, corpus_languages, read_pairs, training_sentences  # noqa: E402
from fs2mini.data import DataConfig, Seq2SeqBatches, shaped_for  # noqa: E402
from fs2mini.scoring import score_translations  # noqa: E402
from fs2mini.generation import GenerationConfig  # noqa: E402
from fs2mini.model import ModelConfig  # noqa: E402
from fs2mini.optim import AdamWConfig, InverseSqrtConfig, build_optimizer  # noqa: E402
from fs2mini.pipeline import Skipped  # noqa: E402
from fs2mini.precision import has_native_bf16  # noqa: E402
from fs2mini.tokenizer import Tokenizer, TokenizerConfig, load_or_train_tokenizer  # noqa: E402

TASKS: dict[str, BibleCorpus] = {
    "kjv-fra": BibleCorpus(),
    "kjv-deu": BibleCorpus(target_bible="e"),
    "kjv-fra-5k": BibleCorpus(train_books=(40, 41, 42, 43, 44, 45)),
    "bbe-fra": BibleCorpus(source_bible="3"),
    "web-spa": BibleCorpus(source_bible="4", target_bible="v"),
}
"""Offline translation tasks (verse-aligned Bibles; the same valid and test books): `kjv-fra` is KJV →
Louis Segond, the task recipes/bible_budget.py was first tuned on; `kjv-deu` English → German;
`kjv-fra-5k` the low-resource case, 5,219 training verses (Matthew to Romans; the others have 30,253);
`bbe-fra` the Bible in Basic English → Louis Segond; `web-spa` the World English Bible → Spanish.
Recipe changes are chosen on the validation splits of the first three (docs/quality.md reports each on
all three); `web-spa` is held back: no tuning decision looks at it, and the final recipe is reported on
its test split once."""

TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]
"""`--task`'s choices: the names of TASKS, written once."""

SHAPE = ModelConfig(model_dim=256, num_encoder_layers=4, num_decoder_layers=4, num_encoder_attn_heads=4,
                    num_decoder_attn_heads=4, ffn_inner_dim=1024, dropout_p=0.1, max_seq_len=512)
"""The equal-terms shape: Hugging Face's M2M100 gets exactly these sizes (9.4 M parameters at vocab 8k)."""


@dataclass(frozen=True)
class QualityConfig:
    """Train and decode fs2mini and Hugging Face M2M100 on equal terms; print BLEU and its parts."""

    task: TaskName = "kjv-fra"
    """Which offline task (TASKS): its corpus trains the tokenizer and both systems and gives the split scored."""
    updates: int = 1200
    """Updates per system (ignored when --budget-minutes is set)."""
    budget_minutes: float = 0.0
    """Train each system for this many minutes of wall-clock time instead of a fixed number of updates."""
    systems: tuple[Literal["fs2mini", "hf", "hf-tuned"], ...] = ("fs2mini", "hf")
    """Which systems to run, in this order (hf-tuned: HF with bf16 autocast where native and --hf-tuned-lr).
    With --fs2mini-recipe, fs2mini comes first, or is left out to add HF systems to --label's recipe run."""
    fs2mini_model: ModelConfig = SHAPE
    """fs2mini's model (change its dropouts for ablations; keep the sizes for equal terms)."""
    hf_attention_dropout: float = 0.0
    """HF M2M100's attention dropout (its default for this comparison: 0)."""
    hf_activation_dropout: float = 0.0
    """HF M2M100's dropout after the FFN activation (0)."""
    hf_init: Literal["hf", "fs2mini"] = "hf"
    """HF's initialisation: its own, or fairseq's Xavier (fs2mini's `--model.init fairseq`; the reverse ablation)."""
    vocab_size: int = 8000
    """Sentencepiece vocabulary of the shared tokenizer."""
    max_tokens: int = 2048
    """Padded tokens per batch (one batch per update: ~1.8k target tokens)."""
    lr: float = 1e-3
    """Peak learning rate."""
    hf_tuned_lr: float = 1.5e-3
    """hf-tuned's peak learning rate (recipes/bible_budget.py's)."""
    warmup_steps: int = 500
    """Inverse-sqrt warmup."""
    weight_decay: float = 1e-4
    """AdamW's decoupled weight decay."""
    label_smoothing: float = 0.1
    """Label smoothing of both losses."""
    threads: int = 2
    """torch threads per system."""
    device: str = "cpu"
    """Where both systems train and decode ("cuda" for ablations at equal updates; timings are then not CPU figures)."""
    bf16: bool = False
    """Train both systems under bf16 autocast (the same for both; ~2x faster on CPUs with native bf16)."""
    seed: int = 1
    """Initialisation and data-order seed (the same for both systems)."""
    test_sentences: int = 0
    """Translate only the first N test pairs (0 = the whole test split)."""
    split: Literal["test", "valid"] = "test"
    """Split to translate and score: tune on valid, report test once."""
    fs2mini_recipe: Path | None = None
    """Budget mode: train fs2mini by running this recipe as a user does (`--trainer.max-time` = the budget),
    not the equal-terms loop; Hugging Face then uses the recipe run's tokenizer."""
    recipe_args: str = ""
    """Extra flags for the recipe's command line, one string (a sweep's change: --recipe-args="--optimizer.lr 2e-3")."""
    recipe_checkpoint: str | None = None
    """Checkpoint of the recipe run to decode (default: what `translate` loads, the newest)."""
    average_last: int = 0
    """Budget mode: also decode the average of the recipe run's last N step checkpoints (`fs2mini.average`),
    reported as system `fs2mini-avgN` (the run must keep them: --trainer.keep-last-checkpoints N or more)."""
    decodings: tuple[Literal["beam4", "beam4-lp1.4", "greedy"], ...] = ("beam4", "beam4-lp1.4", "greedy")
    """Which decodings to run and score (fewer: quicker tuning runs)."""
    label: str = ""
    """Name of this run in the JSON (default: 'updates-N' or 'budget-Mmin')."""
    output: Path = Path("benchmarks/quality.json")
    """JSON file the results are merged into (by label)."""


# --------------------------------------------------------------------------------------------
# The worker: one system, in its own process.


def quality_tokenizer(corpus: BibleCorpus, vocab_size: int) -> Tokenizer:
    langs = corpus_languages(corpus)
    return load_or_train_tokenizer(TokenizerConfig(vocab_size=vocab_size), training_sentences(corpus, Skipped()), langs)


def fs2mini_init_(model: torch.nn.Module, pad_idx: int, model_dim: int) -> None:
    """fairseq's initialisation (fs2mini's `--model.init fairseq`) applied to any model: Xavier linears, N(0, d^-1/2) embeddings."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, std=model_dim**-0.5)
            with torch.no_grad():
                module.weight[pad_idx].zero_()


def build_system(job: dict, tokenizer: Tokenizer):
    """(model, loss function) of one system, initialised as the job says."""
    from baselines import build_hf_m2m100, hf_logits

    from fs2mini.task import TaskConfig

    vocab = tokenizer.vocab_info
    if job["system"] == "fs2mini":
        cfg = ModelConfig(**job["fs2mini_model"])
        model = cfg.build(vocab)
        return model, TaskConfig(label_smoothing=job["label_smoothing"]).build(vocab).compute_loss
    model = build_hf_m2m100(SHAPE, vocab.size, vocab.pad_idx, vocab.eos_idx, attention_dropout=job["hf_attention_dropout"],
                            activation_dropout=job["hf_activation_dropout"])
    if job["hf_init"] == "fs2mini":
        fs2mini_init_(model, vocab.pad_idx, SHAPE.model_dim)

    def hf_loss(model: torch.nn.Module, batch) -> tuple[torch.Tensor, int]:
        logits = hf_logits(model, batch.source, batch.target_input, vocab.pad_idx)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.target_output.flatten(), reduction="sum",
                                                 ignore_index=vocab.pad_idx, label_smoothing=job["label_smoothing"])
        return loss, batch.num_target_tokens

    return model, hf_loss


def translate(job: dict, model: torch.nn.Module, tokenizer: Tokenizer, sources: list[str], beam: int,
              len_penalty: float, device: torch.device) -> list[str]:
    """Test translations: fs2mini's `Translator`, or HF's `generate` with the same forced start, length
    limit and length penalty (1.0 is HF's default, 1.4 fs2mini's)."""
    from fs2mini.translator import Translator, pad_sources

    source_lang, target_lang = tokenizer.langs
    model.eval()
    if job["system"] == "fs2mini":
        return Translator(model, tokenizer, source_lang, target_lang).translate(
            sources, GenerationConfig(beam_size=beam, len_penalty=len_penalty))
    vocab = tokenizer.vocab_info
    encoded = tokenizer.encode_source(sources, source_lang)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs = [""] * len(encoded)
    with torch.no_grad():
        for start in range(0, len(order), 32):
            rows = order[start : start + 32]
            source, lengths = pad_sources([encoded[i] for i in rows], vocab.pad_idx, device)
            generated = model.generate(
                input_ids=source, attention_mask=(source != vocab.pad_idx).long(), num_beams=beam, do_sample=False,
                max_new_tokens=int(1.2 * int(lengths.max()) + 10) + 1, decoder_start_token_id=vocab.eos_idx,
                forced_bos_token_id=tokenizer.lang_ids[target_lang], eos_token_id=vocab.eos_idx,
                pad_token_id=vocab.pad_idx, length_penalty=len_penalty,
            )
            for row, index in enumerate(rows):
                outputs[index] = tokenizer.decode(generated[row].tolist())
    return outputs


def train_equal_terms(job: dict, tokenizer: Tokenizer, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Train one system with the shared loop (`fs2mini.trainer.train_step`) for the job's updates or budget."""
    from fs2mini.trainer import train_step

    torch.manual_seed(job["seed"])
    model, compute_loss = build_system(job, tokenizer)
    model.to(device).train()
    optimizer = build_optimizer(AdamWConfig(lr=job["lr"], weight_decay=job["weight_decay"]), model.parameters())
    lr_at = InverseSqrtConfig(warmup_steps=job["warmup_steps"]).build(job["lr"], job["updates"])
    data = shaped_for(DataConfig(corpus=TASKS[job["task"]], max_tokens=job["max_tokens"]), job["bf16"])
    batches = Seq2SeqBatches(data, "train", tokenizer, seed=job["seed"], shuffle=True)
    budget_s = job["budget_minutes"] * 60
    step, epoch, tokens, losses = 0, 0, 0, []
    started = time.perf_counter()

    def done() -> bool:
        return time.perf_counter() - started >= budget_s if budget_s > 0 else step >= job["updates"]

    while not done():
        for batch in batches.iter_epoch(epoch):
            if done():
                break
            step += 1
            result = train_step(model, compute_loss, optimizer, [batch], lr_at(step), max_grad_norm=1.0, device=device,
                                autocast_dtype=torch.bfloat16 if job["bf16"] else None)
            tokens += result.num_tokens
            losses.append(result.loss)
        epoch += 1
    train_s = time.perf_counter() - started
    return model, {"updates": step, "epochs": epoch, "train_s": train_s, "target_tokens_per_s": tokens / train_s,
                   "final_train_loss": sum(losses[-50:]) / len(losses[-50:])}


def train_recipe(job: dict) -> tuple[torch.nn.Module, Tokenizer, dict]:
    """Run the recipe as a user runs it (its own CLI, `--trainer.max-time` = the budget) and load its final weights."""
    from fs2mini.translator import Translator

    run_dir = Path(job["recipe_run_dir"])
    corpus, task_flags = TASKS[job["task"]], []
    if job["task"] != "kjv-fra":  # the recipe's own corpus otherwise, as a user runs it (Bible recipes: kjv-fra)
        task_flags = ["--data.corpus.source-bible", corpus.source_bible, "--data.corpus.target-bible", corpus.target_bible]
        if corpus.train_books:
            task_flags += ["--data.corpus.train-books", *map(str, corpus.train_books)]
    command = [sys.executable, job["fs2mini_recipe"], "--output-dir", str(run_dir), *task_flags,
               "--trainer.max-time", f"{job['budget_minutes'] * 60:g}s", "--trainer.progress", "lines",
               *shlex.split(job["recipe_args"])]
    environment = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment, stdout=sys.stderr)
    wall_s = time.perf_counter() - started
    translator = Translator.from_run(run_dir, job["recipe_checkpoint"], job["device"])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_lines = [m for m in metrics if m.get("split") == "train"]
    return translator.model, translator.tokenizer, {
        "updates": translator.step, "train_s": max([m["elapsed_s"] for m in metrics if "elapsed_s" in m], default=wall_s),
        "wall_s_with_setup": wall_s, "final_train_loss": train_lines[-1]["loss"] if train_lines else None,
        "run_dir": str(run_dir), "checkpoint": str(translator.checkpoint_path)}


# (name, beam size, length penalty): what `worker` decodes and, in this order, what the table prints.
DECODINGS = (("beam4", 4, 1.0), ("beam4-lp1.4", 4, 1.4), ("greedy", 1, 1.0))


def worker(job: dict) -> dict:
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    corpus = TASKS[job["task"]]
    if job["system"] == "fs2mini" and job["fs2mini_recipe"]:
        model, tokenizer, stats = train_recipe(job)
        model.to(device)
    else:
        tokenizer = Tokenizer(Path(job["tokenizer"]), corpus_languages(corpus))
        model, stats = train_equal_terms(job, tokenizer, device)

    pairs = list(read_pairs(corpus, job["split"], Skipped()))
    if job["test_sentences"]:
        pairs = pairs[: job["test_sentences"]]
    result = {"system": job["system"], **stats, "lr": job["lr"], "bf16": job["bf16"],
              "parameters": sum(p.numel() for p in model.parameters()), "test_pairs": len(pairs),
              **decode_and_score(job, model, tokenizer, pairs, device)}
    if job["system"] == "fs2mini" and job["fs2mini_recipe"] and job["average_last"]:
        from fs2mini.average import average_checkpoints, choose_checkpoints
        from fs2mini.translator import Translator

        run_dir = Path(job["recipe_run_dir"])
        name = f"averaged_last{job['average_last']}"
        average_checkpoints(choose_checkpoints(run_dir, job["average_last"], None), run_dir / "checkpoints" / f"{name}.pt",
                            run_dir)
        averaged = Translator.from_run(run_dir, name, job["device"])
        result["averaged"] = {**result, "system": f"fs2mini-avg{job['average_last']}", "checkpoint": name,
                              **decode_and_score(job, averaged.model.to(device), averaged.tokenizer, pairs, device)}
    return result


def decode_and_score(job: dict, model: torch.nn.Module, tokenizer: Tokenizer, pairs: list[tuple[str, str]],
                     device: torch.device) -> dict:
    """The job's decodings of `pairs`' sources, each scored against their references."""
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    decoded = {}
    # Both systems decode alike: greedy, beam 4 with HF's default length penalty (1.0), and beam 4 with
    # fs2mini's default (1.4, chosen on the validation split; docs/results.md, "Quality within a time budget").
    for name, beam, len_penalty in DECODINGS:
        if name not in job["decodings"]:
            continue
        started = time.perf_counter()
        hypotheses = translate(job, model, tokenizer, sources, beam, len_penalty, device)
        scores = score_translations(hypotheses, references)
        decoded[name] = {"bleu": scores.bleu, "chrf": scores.chrf, "precisions": list(scores.precisions),
                         "brevity_penalty": scores.brevity_penalty, "length_ratio": scores.length_ratio,
                         "seconds": time.perf_counter() - started, "samples": hypotheses[:3]}
        decoded["bleu_signature"] = scores.bleu_signature
    return decoded


# --------------------------------------------------------------------------------------------
# The driver.


def run_worker(job: dict) -> dict:
    """One system in a fresh Python process (its last stdout line is the JSON result)."""
    proc = subprocess.run([sys.executable, __file__, "_worker", json.dumps(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{job['system']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(cfg: QualityConfig) -> None:
    if cfg.updates <= 0 and cfg.budget_minutes <= 0:
        sys.exit("quality.py: --updates or --budget-minutes must be positive")
    label = cfg.label or (f"budget-{cfg.budget_minutes:g}min" if cfg.budget_minutes > 0 else f"updates-{cfg.updates}")
    if not cfg.label and cfg.task != "kjv-fra":
        label = f"{cfg.task}-{label}"
    if cfg.average_last and cfg.fs2mini_recipe is None:
        sys.exit("quality.py: --average-last averages the checkpoints of a recipe run; give --fs2mini-recipe too")
    if cfg.fs2mini_recipe is not None and (cfg.budget_minutes <= 0 or ("fs2mini" in cfg.systems and cfg.systems[0] != "fs2mini")):
        sys.exit("quality.py: --fs2mini-recipe needs --budget-minutes and fs2mini as the first of --systems "
                 "(or, to add Hugging Face systems to a recipe run already made, no fs2mini)")
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("systems", "label", "output")}
    adding = cfg.fs2mini_recipe is not None and "fs2mini" not in cfg.systems
    if cfg.fs2mini_recipe is not None:  # a fresh run directory; HF then shares the tokenizer that the recipe trains
        recipe_run_dir = Path(".cache/quality-runs") / label
        if not adding:
            shutil.rmtree(recipe_run_dir, ignore_errors=True)
        settings.update(recipe_run_dir=str(recipe_run_dir.resolve()), fs2mini_recipe=str(cfg.fs2mini_recipe))
        tokenizer_path = recipe_run_dir.resolve() / "tokenizer.model"
        if adding:
            check_addable(label, settings, tokenizer_path, cfg.output)
    else:
        tokenizer_path = quality_tokenizer(TASKS[cfg.task], cfg.vocab_size).model_path
    machine = machine_info(cfg.device)
    results = {"settings": settings, "machine": machine, "systems": {}}
    for system in cfg.systems:
        job = {**settings, "system": system, "tokenizer": str(tokenizer_path)}
        if system == "hf-tuned":  # what a HF user can set: bf16 autocast where it is native, the recipe's peak lr
            job.update(bf16=cfg.device != "cpu" or has_native_bf16(), lr=cfg.hf_tuned_lr)
        job["fs2mini_model"] = asdict(cfg.fs2mini_model)
        print(f"[{label}] training {system} ...", file=sys.stderr, flush=True)
        done = run_worker(job)
        averaged = done.pop("averaged", None)
        for result in (done, averaged) if averaged else (done,):
            results["systems"][result["system"]] = {**result, "added_to_run": {"machine": machine}} if adding else result
            first = next(name for name, _, _ in DECODINGS if name in result)
            print(f"[{label}] {result['system']}: {result['updates']} updates in {result['train_s']:.0f}s, {first} "
                  f"{cfg.split} BLEU {result[first]['bleu']:.2f}, hyp/ref {result[first]['length_ratio']:.3f}",
                  file=sys.stderr, flush=True)
    everything = json.loads(cfg.output.read_text()) if cfg.output.exists() else {}  # now: another run may have written
    if adding:  # the label's recipe run and its other systems stay
        everything[label]["systems"].update(results["systems"])
        results = everything[label]
    else:
        everything[label] = results
    cfg.output.write_text(json.dumps(everything, indent=1, default=str) + "\n")
    print_table(everything)
    for other in ("hf", "hf-tuned"):
        if {"fs2mini", other} <= set(results["systems"]):
            for decoding in (name for name, beam, _ in DECODINGS if beam > 1 and name in cfg.decodings):
                fs2, hf = (results["systems"][name][decoding]["bleu"] for name in ("fs2mini", other))
                print(f"[{label}] {decoding} {cfg.split} BLEU fs2mini / {other} = {fs2:.2f} / {hf:.2f} = "
                      f"{fs2 / max(hf, 1e-9):.2f}x; updates {results['systems']['fs2mini']['updates']} / "
                      f"{results['systems'][other]['updates']}")


SETTINGS_OF_THE_RECIPE_RUN_ONLY = ("recipe_args", "recipe_checkpoint", "average_last", "decodings")
"""Settings that only concern the recipe's own run and decoding: they may differ when systems are added to it."""


def check_addable(label: str, settings: dict, tokenizer_path: Path, output: Path) -> None:
    """Exit with one line unless `label` in `output` is a recipe run made earlier with the same settings
    (but `SETTINGS_OF_THE_RECIPE_RUN_ONLY`) whose tokenizer is still there: what added systems train on."""
    everything = json.loads(output.read_text()) if output.exists() else {}
    if label not in everything:
        sys.exit(f"quality.py: --systems without fs2mini adds systems to the recipe run of --label {label}, which is not "
                 f"in {output}; expected the label of a run made with fs2mini first")
    if not tokenizer_path.exists():
        sys.exit(f"quality.py: the recipe run of --label {label} has no {tokenizer_path} any more; expected the run "
                 "directory that run left in .cache/quality-runs")
    earlier = everything[label]["settings"]
    normal = lambda value: json.loads(json.dumps(value, default=str))  # noqa: E731  (tuples and paths as the JSON has them)
    differing = [key for key in settings if key not in SETTINGS_OF_THE_RECIPE_RUN_ONLY
                 and normal(settings[key]) != normal(earlier.get(key))]
    if differing:
        flags = ", ".join(f"--{key.replace('_', '-')} {earlier.get(key)!r} there, {settings[key]!r} here" for key in differing)
        sys.exit(f"quality.py: added systems must train as the recipe run of --label {label} did; differing: {flags}")


def print_table(everything: dict) -> None:
    print("| run | system | updates | train min | decoding | BLEU | precisions 1/2/3/4 | BP | hyp/ref | chrF |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, results in everything.items():
        for system, r in results["systems"].items():
            for name, _, _ in DECODINGS:
                if name not in r:  # runs from before a decoding was added
                    continue
                d = r[name]
                precisions = " / ".join(f"{p:.1f}" for p in d["precisions"])
                print(f"| {label} | {system} | {r['updates']} | {r['train_s'] / 60:.1f} | {name} | {d['bleu']:.2f} | "
                      f"{precisions} | {d['brevity_penalty']:.3f} | {d['length_ratio']:.3f} | {d['chrf']:.1f} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_worker"]:
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        main(tyro.cli(QualityConfig))
