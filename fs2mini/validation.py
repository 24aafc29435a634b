"""Loss and perplexity over a split, computed the same way during training and by `fs2mini.evaluate`,
and `Validator`: the training run's validation (every direction's loss, BLEU/chrF, printed samples).

Kept apart from the training loop so that evaluation and translation code can use it without
importing the trainer (and the trainer can import them). Translations are scored by
fs2mini/scoring.py, as `evaluate` scores them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from fs2mini.checkpoint import remove_partial_writes, write_atomically
from fs2mini.config import TrainConfig, sharded
from fs2mini.corpus import describe_corpus
from fs2mini.data import Seq2SeqBatches, collate, direction_name
from fs2mini.distributed import DistEnv, all_reduce_max, all_reduce_sum, unwrap
from fs2mini.errors import UserError
from fs2mini.precision import autocast_for
from fs2mini.rundir import TRANSLATIONS_DIR
from fs2mini.task import Seq2Seq
from fs2mini.tokenizer import EOS_ID, PAD_ID

if TYPE_CHECKING:  # annotations only: evaluate imports this module without the training run's parts
    from fs2mini.components import Components
    from fs2mini.metrics import ProgressDisplay
    from fs2mini.scoring import Evaluation
    from fs2mini.trackers import RunLog


@torch.no_grad()
def validate(model: nn.Module, task: Seq2Seq, batches: Seq2SeqBatches, device: torch.device,
             autocast_dtype: torch.dtype | None, env: DistEnv = DistEnv()) -> dict[str, float]:
    """Loss (the training objective) and NLL/perplexity per target token over the whole split.

    Under torchrun each rank evaluates its shard and the sums are all-reduced. Ranks with fewer
    batches repeat a forward pass whose result is discarded, because FSDP needs every rank to run
    the same number of forward passes.
    """
    model.eval()
    own = list(batches)
    rounds = all_reduce_max(len(own), env, device)
    filler = own[0] if own else collate([([EOS_ID], [EOS_ID, EOS_ID])], PAD_ID)
    loss_sum = nll_sum = 0.0
    tokens = 0
    for index in range(rounds):
        batch = (own[index] if index < len(own) else filler).to(device)
        with autocast_for(device, autocast_dtype):
            loss, num_tokens = task.compute_loss(model, batch)
            nll, _ = task.compute_nll(model, batch)
        if index < len(own):
            loss_sum += float(loss)
            nll_sum += float(nll)
            tokens += num_tokens
    model.train()
    loss_sum, nll_sum, tokens = all_reduce_sum([loss_sum, nll_sum, tokens], env, device)
    if tokens == 0:
        directions = ", ".join(f"{direction_name(langs)} ({describe_corpus(corpus)})"
                               for langs, corpus in zip(batches.directions, batches.corpora))
        raise UserError(f"the {batches.split} split of direction {directions} has no usable sentence pairs "
                        f"(skipped: {batches.skipped.summary() or 'nothing'})")
    nll_per_token = nll_sum / tokens
    return {"loss": loss_sum / tokens, "nll": nll_per_token, "ppl": math.exp(min(nll_per_token, 100.0)), "tokens": int(tokens)}


def combine_losses(results: list[dict[str, float]]) -> dict[str, float]:
    """The `validate` results of several directions as one, per target token over all of them."""
    if len(results) == 1:
        return dict(results[0])
    tokens = sum(result["tokens"] for result in results)
    nll_per_token = sum(result["nll"] * result["tokens"] for result in results) / tokens
    return {"loss": sum(result["loss"] * result["tokens"] for result in results) / tokens, "nll": nll_per_token,
            "ppl": math.exp(min(nll_per_token, 100.0)), "tokens": int(tokens)}


VALIDATION_SAMPLES = 2
"""Translations printed next to their references at each validation."""


class Validator:
    """Validation loss over the whole split (+ BLEU/chrF of all of it or its first N sentences, translated on rank 0), logged.

    A run of several directions (zero-shot ones included) is validated direction by direction:
    `metrics.jsonl` gets `eng-fra/loss`, `eng-fra/bleu`, ... next to the overall `loss` (per target
    token over the trained directions) and `bleu`/`chrf` (their mean); zero-shot directions are
    reported but count in neither. A run into several target languages also gets each direction's
    off-target rate (`eng-fra/off_target`: translations not in the target language, fs2mini/langid.py;
    for target languages py3langid knows) and their mean, `off_target`, where every trained one has it."""

    def __init__(self, cfg: TrainConfig, parts: Components, env: DistEnv, device: torch.device,
                 metrics: RunLog | None, display: ProgressDisplay) -> None:
        self.parts, self.env, self.device, self.metrics, self.display = parts, env, device, metrics, display
        self.autocast_dtype = parts.precision.autocast_dtype
        self.translations_dir = cfg.run_dir / TRANSLATIONS_DIR
        """Each validation's translations, `valid_step_XXXXXXXX.tsv` (source, reference, hypothesis per line)."""
        if env.is_main:  # the temporary files of writes a kill interrupted (a resumed run writes those steps again)
            remove_partial_writes(self.translations_dir)
        tc, data = cfg.trainer, parts.train_batches.cfg  # the data config as the run resolved it (`shaped_for`)
        corpora = parts.directions.evaluated
        self.languages = [entry.langs for entry in corpora]
        self.names = [entry.name + (" (zero-shot)" if entry.zero_shot else "") for entry in corpora]
        self.trained = len(parts.directions.primary)
        self.several = len(corpora) > 1
        self.off_target = len({target for _, target in self.languages}) > 1
        """Measure off-target rates: only into several languages, where answering in the wrong one is the failure to watch."""
        shard = {"rank": env.rank, "world_size": env.world_size}
        self.batches = [Seq2SeqBatches(data, "valid", parts.tokenizer, seed=tc.seed, shuffle=False, corpora=[entry], **shard)
                        for entry in corpora] if self.several else [parts.valid_batches]
        self.translates = tc.valid_translate_sentences != 0 and not sharded(tc, env)
        if self.translates and env.is_main:  # only rank 0 translates
            # Decoding and scoring are a layer of their own (beam search, sacrebleu), imported only by a run that
            # translates while validating: a reader of the training loop does not need them.
            from fs2mini.generation import GenerationConfig
            from fs2mini.translator import Translator
            count = None if tc.valid_translate_sentences == "all" else tc.valid_translate_sentences
            self.pairs = [batches.text_pairs(count) for batches in self.batches]  # (from the prepared split: no corpus re-read)
            self.translator = Translator(unwrap(parts.model), parts.tokenizer, *self.languages[0],
                                         directions=parts.directions.directions)
            self.generation = GenerationConfig(beam_size=tc.valid_beam_size)

    def __call__(self, step: int, elapsed_s: float) -> dict[str, float]:
        each = [validate(self.parts.model, self.parts.task, batches, self.device, self.autocast_dtype, self.env) for batches in self.batches]
        result = combine_losses(each[:self.trained])
        samples = []
        if self.translates and step > 0:  # an untrained model's output runs to the length limit and scores ~0
            from fs2mini.scoring import translate_and_score
            # Rank 0 translates (the unwrapped replica, no collectives); the scores reach every rank.
            evaluations = [translate_and_score(self.translator, pairs, self.generation, source_lang=langs[0], target_lang=langs[1],
                                               measure_off_target=self.off_target)
                           for pairs, langs in zip(self.pairs, self.languages)] if self.env.is_main else [None] * len(each)
            keys = ("bleu", "chrf", "length_ratio") + (("off_target",) if self.off_target else ())
            # Rank 0's values, the others' zeros; NaN: not measured (a target language without an identifier model).
            scores = all_reduce_sum([value for evaluation in evaluations for value in (
                [evaluation.scores.bleu, evaluation.scores.chrf, evaluation.scores.length_ratio,
                 math.nan if evaluation.off_target is None else evaluation.off_target][:len(keys)]
                if evaluation else [0.0] * len(keys))], self.env, self.device)
            for index, direction in enumerate(each):
                direction.update({key: value for key, value in zip(keys, scores[len(keys) * index:]) if not math.isnan(value)})
            for key in keys:
                if all(key in direction for direction in each[:self.trained]):
                    result[key] = sum(direction[key] for direction in each[:self.trained]) / self.trained
            if self.env.is_main:
                samples = [list(zip(evaluation.hypotheses, evaluation.references))[:VALIDATION_SAMPLES if not self.several else 1]
                           for evaluation in evaluations]
                for index, evaluation in enumerate(evaluations):
                    self._save_translations(step, evaluation, self.languages[index] if self.several else None)
        if self.several:
            result.update({f"{direction_name(langs)}/{key}": value for langs, direction in zip(self.languages, each)
                           for key, value in direction.items()})
        if self.metrics is not None:
            self.metrics.write({"step": step, "split": "valid", **result, "elapsed_s": elapsed_s})
        self.display.message(f"valid step {step}: {_scores_line(result)}")
        for index, direction in enumerate(each if self.several else []):
            self.display.message(f"  {self.names[index]}: {_scores_line(direction)}")
        for name, direction_samples in zip(self.names, samples):  # so a length or repetition problem shows while training
            for hypothesis, reference in direction_samples:
                self.display.message((f"  {name}\n" if self.several else "") + f"  hyp: {hypothesis}\n  ref: {reference}")
        return result

    def _save_translations(self, step: int, evaluation: Evaluation, langs: tuple[str, str] | None) -> None:
        """So a user can read what the model said at step N, not only its score (one file per direction)."""
        rows = "".join(f"{s}\t{r}\t{h}\n" for s, r, h in zip(evaluation.sources, evaluation.references, evaluation.hypotheses))
        name = f"valid_step_{step:08d}" + (f".{direction_name(langs)}" if langs else "")
        path = self.translations_dir / f"{name}.tsv"
        # (write_atomically creates the directory: a full disk there is its one `cannot write` line too)
        write_atomically(path, lambda handle: handle.write(rows.encode("utf-8")), what=str(path))


def _scores_line(result: dict[str, float]) -> str:
    return (f"loss {result['loss']:.3f}  nll {result['nll']:.3f}  ppl {result['ppl']:.2f}"
            + (f"  BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  hyp/ref length {result['length_ratio']:.3f}"
               if "bleu" in result else "")
            + (f"  off-target {result['off_target']:.1%}" if "off_target" in result else ""))
