"""One evaluation of a model's generations: prompts in, named metrics (with sample counts and errors) out.

``EvalSuite`` holds what is fixed across evaluations (built once, ``EvalSuite.build``): the demo world and
its scorer, the caption prompts of both splits with their real renders, a disjoint set of real renders
(the FID / KID reference), validation speech with its transcripts and reference units, and the two
floors / ceilings that bound the scores (computed once). ``evaluate(tasks, suite)`` runs the model's
tasks (``sampling.GenerationTasks``, so the sampling settings and seed are the tasks') and returns
``EvalResult``: ``metrics`` by name (``val/gen/<name>`` in TensorBoard), each with its value, sample count
and a description, plus notes on what was not measured and the samples for a grid.

Metric names (``heldout/<name>``: the same on prompts whose scenes show a held-out colour/shape pair):

- ``faithfulness_{colour,shape,size,count,position,all}``: caption -> image, the scorer's reading of the
  generated picture against the caption (``faithfulness.py``);
- ``fid``, ``kid``: generated pictures of the seen prompts against as many other real renders (none of them a
  picture a prompt shows), in the scorer's features (``fid_inception`` / ``kid_inception`` when Inception
  weights are local); their floors are the prompts' real renders against the same set (``fid_floor``) and
  two disjoint halves of the data's validation images (``fid_floor_val``, when it has twice as many);
- ``caption_{colour,...,all}``, ``bleu``: image -> caption on the prompts' real renders, the generated
  caption parsed and judged against the true scene; BLEU-4 against four captions of the scene;
- ``wer``, ``cer``: speech -> text on validation speech against its transcript;
- ``tts_unit_acc``, ``tts_duration_ratio``: text -> speech from those transcripts, units against the
  speech tokenizer's units of the validation clip (the built-in synthesizer's rendering in the demo).

Data other than the demo world: FID / KID, CLIPScore and label accuracies as ``data_metrics.py`` says,
when configured. Every metric carries its sampling error (``Metric.se``, ``errors.py``).

Not measured: whether generated speech says its text (no speech recogniser runs on it: the unit match
is the honest offline proxy).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mot_lightning.eval import errors as E
from mot_lightning.eval import metrics as M
from mot_lightning.eval.data_metrics import DataMetrics, DataSuite, build_data_suite, data_tasks
from mot_lightning.eval.faithfulness import ATTRIBUTES, accuracy, judge
from mot_lightning.eval.results import EvalResult, Metric, Sample  # noqa: F401  (the results live there)
from mot_lightning.eval.scorer import SceneScorer, ScorerConfig, fitted_scorer, load_scorer
from mot_lightning.eval.worlds import WORLD, EvalItem, World, eval_items, get_world
from mot_lightning.modality import Modality
from mot_lightning.sampling import GenerationTasks


@dataclass
class EvalSuite:
    """What stays fixed between evaluations: prompts, references, scorer, floors (see the module doc)."""

    world: World | None = None
    scorer: SceneScorer | None = None
    prompts: dict[str, list[EvalItem]] = field(default_factory=dict)  # split -> items
    reference: Tensor | None = None  # float[N, 3, R, R]: real renders disjoint from the prompts'
    speech: list[Tensor] = field(default_factory=list)  # validation clips, float[samples] at 16 kHz
    transcripts: list[str] = field(default_factory=list)
    reference_units: list[Tensor] = field(default_factory=list)
    inception: tuple[M.InceptionFeatures | None, str] = (None, "")  # (features, weights file) or (None, why)
    bounds: dict[str, float] = field(default_factory=dict)  # floors of FID/KID, the scorer on real renders
    validation: Tensor | None = None  # float[2n, 3, R, R]: validation images, two disjoint halves of n
    notes: list[str] = field(default_factory=list)
    seed: int = 0
    data: DataSuite | None = None  # data other than the demo world: what ``DataMetrics`` configures

    @classmethod
    def build(cls, world: World | None, scorer: SceneScorer | None, image_size: int, n_prompts: int,
              n_heldout: int, speech: tuple[list[Tensor], list[str]] = ([], []), speech_tokenizer=None,
              inception_weights: str | None = None, seed: int = 0,
              validation_images: Tensor | None = None) -> EvalSuite:
        """The demo world's suite (and the speech part of any); ``validation_images`` float[N, 3, R, R]: the
        data's validation images; with ``N >= 2 n_prompts`` the FID / KID floor is also measured between their
        first two disjoint halves of ``n_prompts``. Other data's image metrics: ``build_suite``."""
        suite = cls(world=world, scorer=scorer, seed=seed, inception=M.inception_features(inception_weights))
        if validation_images is not None and len(validation_images) >= 2 * n_prompts:
            suite.validation = validation_images[: 2 * n_prompts]
        elif world is not None:
            have = 0 if validation_images is None else len(validation_images)
            suite.notes.append(f"{have} validation images, fewer than 2 x {n_prompts}: the FID / KID floor of two "
                               "disjoint halves of validation images is not measured (only the prompts' renders "
                               "against the reference renders)")
        if world is not None and scorer is not None:
            suite.prompts = {"seen": eval_items(world, n_prompts, "seen", image_size, seed)}
            if n_heldout:
                suite.prompts["heldout"] = eval_items(world, n_heldout, "heldout", image_size, seed)
            suite.reference = _reference(world, suite.prompts["seen"], image_size, seed)
            suite._bounds()
        clips, texts = speech
        if clips and speech_tokenizer is not None:
            suite.speech, suite.transcripts = list(clips), list(texts)
            suite.reference_units = [speech_tokenizer.encode(c).cpu() for c in clips]
        return suite

    def _bounds(self) -> None:
        """Real-vs-real floors of FID/KID (``<metric>_floor``: the prompts' renders against the reference
        renders; ``<metric>_floor_val``: two disjoint halves of validation images, when there are enough) and
        the scorer's accuracy on the real renders of the prompts (the ceiling of faithfulness)."""
        real = self.real_images("seen")
        floor = M.distribution(real, self.reference, M.ScorerFeatures(self.scorer), self.seed)
        self.bounds = {f"{k}_floor": v for k, v in floor.items()}
        if self.validation is not None:
            n = len(self.validation) // 2
            halves = M.distribution(self.validation[:n], self.validation[n:], M.ScorerFeatures(self.scorer),
                                    self.seed)
            self.bounds |= {f"{k}_floor_val": v for k, v in halves.items()}
        inception = self.inception[0]
        if inception is not None:
            floor = M.distribution(real, self.reference, inception, self.seed)
            self.bounds |= {f"{k}_inception_floor": v for k, v in floor.items()}
        for split, items in self.prompts.items():
            shown = self.scorer.predict(self.real_images(split))
            named = [self.world.parse(it.caption, strict=True) for it in items]
            ceiling = accuracy(named, shown)["all"]
            self.bounds[f"{split}_faithfulness_all_ceiling"] = ceiling

    def real_images(self, split: str) -> Tensor:
        return torch.stack([it.image for it in self.prompts[split]])


@dataclass(frozen=True)
class ScorerSource:
    """Where the scorer comes from: ``file`` (loaded as it is), else the fit-once file of ``config`` in
    ``dir`` (None: the data's ``tokenizer_files.dir``), fitted there when missing."""

    file: str | None = None
    dir: str | None = None
    config: ScorerConfig = field(default_factory=ScorerConfig)

    def scorer(self, world: World, image_size: int, default_dir: str,
               device: torch.device | str = "cpu") -> SceneScorer:
        if self.file is None:
            return fitted_scorer(world.name, image_size, self.dir or default_dir, self.config, device).to(device)
        scorer = load_scorer(self.file)
        if scorer.world.name != world.name or scorer.image_size != image_size:
            raise ValueError(f"scorer file {self.file} reads the {scorer.world.name} world at {scorer.image_size} "
                             f"px, but the prompts are of the {world.name} world at {image_size} px: drop the "
                             "file (a scorer is fitted) or pass one made for this world and size")
        return scorer.to(device)


def build_suite(dm, modalities: set[Modality], device: torch.device | str = "cpu", n_prompts: int = 64,
                n_heldout: int = 32, n_speech: int = 32, world: str = "auto",
                scorer: ScorerSource = ScorerSource(), inception_weights: str | None = None,
                seed: int = 0, data_metrics: DataMetrics | None = None) -> EvalSuite:
    """The suite for a data module after ``setup``: its demo world (``world="auto"``: the demo world when it
    reads the demo corpus, in either ``data.demo.mode``, else none) and that world's scorer at the data's image
    size (``scorer``), speech from its first validation set. Without a demo world, images are scored as
    ``data_metrics`` configures
    (``data_metrics.py``: FID / KID in configured features or local Inception weights, CLIPScore, the label
    scorer) on the first validation set's image-caption pairs."""
    name = world
    if name == "auto":
        name = WORLD.name if getattr(dm, "sources", None) is None else None
    chosen = get_world(name) if name is not None and Modality.IMAGE in modalities else None
    reader = None
    if chosen is not None:
        reader = scorer.scorer(chosen, dm.image_size, dm.tokenizer_files.dir, device)
    speech = dm.speech_text_pairs(n_speech) if Modality.SPEECH in modalities and n_speech else ([], [])
    validation = dm.image_text_pairs(2 * n_prompts)[0] if chosen is not None else None
    suite = EvalSuite.build(chosen, reader, dm.image_size, n_prompts, n_heldout, speech,
                            dm.tokenizers.get(Modality.SPEECH), inception_weights, seed, validation)
    if chosen is None and Modality.IMAGE in modalities:
        config = data_metrics or DataMetrics()
        if config.empty and suite.inception[0] is None:
            suite.notes.append("no demo world and no metrics configured: image generation metrics not measured "
                               "(configure GenerationMetrics' metrics group, or mot eval --metrics FILE: FID / KID "
                               "features, a CLIP folder, a label rule; docs/own_data.md)")
        else:
            suite.data = build_data_suite(dm, config, n_prompts, suite.inception[0], suite.notes, device, seed)
            suite.bounds |= {} if suite.data is None else suite.data.bounds
    return suite


def evaluate(tasks: GenerationTasks, suite: EvalSuite, modalities: set[Modality]) -> EvalResult:
    """Run every task ``modalities`` allow (call with the network in eval mode)."""
    result = EvalResult(notes=list(suite.notes))
    if Modality.IMAGE in modalities and suite.prompts:
        caption_to_image(tasks, suite, result)
        image_to_caption(tasks, suite, result)
    if Modality.IMAGE in modalities and suite.data is not None:
        data_tasks(tasks, suite.data, result)
    if Modality.SPEECH in modalities:
        if suite.speech:
            speech_tasks(tasks, suite, result)
        else:
            result.notes.append("no validation speech (or speech tokenizer): WER, CER and TTS metrics not "
                                "measured")
        result.notes.append("not measured: whether generated speech says its text (no speech recogniser "
                            "runs on it); tts_unit_acc compares its units with the reference's")
    if suite.inception[0] is None and (suite.prompts or suite.data) and Modality.IMAGE in modalities:
        result.notes.append(suite.inception[1])
    return result


def caption_to_image(tasks: GenerationTasks, suite: EvalSuite, result: EvalResult) -> None:
    world, scorer = suite.world, suite.scorer
    generated = {}
    for split, items in suite.prompts.items():
        images = tasks.caption_to_image([it.caption for it in items]).cpu().float().clamp(0, 1)
        generated[split] = images
        named = [world.parse(it.caption, strict=True) for it in items]
        shown = scorer.predict(images)
        prefix = "" if split == "seen" else f"{split}/"
        ceiling = suite.bounds[f"{split}_faithfulness_all_ceiling"]
        acc = accuracy(named, shown)
        result.add(prefix + "faithfulness_", acc, len(items),
                   f"caption->image on {split} prompts: share of the named groups whose attribute (the tag's "
                   "last word) the scorer reads in the generated picture, in the named region ('all': share "
                   "of pictures right on everything, nothing extra). Ceiling: the scorer reads the real "
                   f"renders of these captions right on everything for {ceiling:.3f} of them",
                   se=_accuracy_errors(acc, named))
        for it, image, n, s in zip(items, images, named, shown):
            result.samples.append(Sample(image, it.caption, _misses(n, s), split))
    real, fake = suite.reference, generated["seen"]
    dist, errors = M.distribution_with_errors(real, fake, M.ScorerFeatures(scorer), suite.seed)
    for name, value in dist.items():
        val = suite.bounds.get(f"{name}_floor_val")
        halves = "" if val is None else f"; two disjoint halves of {len(real)} validation images: {val:.4g}"
        result.add("", {name: value}, len(fake),
                   f"{name.upper()} of the generated pictures of the seen prompts vs {len(real)} other real "
                   f"renders, in the scorer's features. Floor (the prompts' real renders vs the same "
                   f"{len(real)}): {suite.bounds[name + '_floor']:.4g}{halves}", se={name: errors[name]})
    inception = suite.inception[0]
    if inception is not None:
        dist, errors = M.distribution_with_errors(real, fake, inception, suite.seed)
        for name, value in dist.items():
            result.add("", {f"{name}_inception": value}, len(fake),
                       f"{name.upper()} of the generated pictures vs {len(real)} real renders, Inception-v3 "
                       f"features. Floor: {suite.bounds[name + '_inception_floor']:.4g}",
                       se={f"{name}_inception": errors[name]})


def _reference(world: World, prompts: list[EvalItem], image_size: int, seed: int) -> Tensor:
    """float[n, 3, R, R]: as many real renders of the seen split as there are prompts, none of them a picture
    that one of the prompts shows (the reference must not hold the prompts' own renders)."""
    shown = {it.image.numpy().tobytes() for it in prompts}
    images: list[Tensor] = []
    for attempt in range(100):
        for it in eval_items(world, len(prompts), "seen", image_size, seed + 1_000_003 + attempt):
            if it.image.numpy().tobytes() not in shown and len(images) < len(prompts):
                images.append(it.image)
        if len(images) == len(prompts):
            return torch.stack(images)
    raise ValueError(f"the {world.name} world drew fewer than {len(prompts)} pictures that the prompts do not "
                     "show: lower n_prompts")


def _accuracy_errors(acc: dict[str, float], named) -> dict[str, float]:
    """Binomial errors of ``faithfulness.accuracy``'s values: attributes over the named groups, ``all`` over
    the pictures."""
    groups = sum(len(n) for n in named)
    return {k: E.binomial_se(v, len(named) if k == "all" else groups) for k, v in acc.items()}


def _misses(named, shown) -> list[str]:
    j = judge(named, shown)
    wrong = sorted({a for g in j.groups for a in ATTRIBUTES if not g[a]}, key=ATTRIBUTES.index)
    return wrong + (["extra"] if j.extra else [])


def image_to_caption(tasks: GenerationTasks, suite: EvalSuite, result: EvalResult) -> None:
    for split, items in suite.prompts.items():
        captions = tasks.image_to_caption(suite.real_images(split))
        truth = [it.groups for it in items]
        read = [suite.world.parse(c, strict=False) for c in captions]
        prefix = "" if split == "seen" else f"{split}/"
        acc = accuracy(truth, read)
        result.add(prefix + "caption_", acc, len(items),
                   f"image->caption on real renders of {split} scenes: share of the scene's groups whose "
                   "attribute (the tag's last word) the parsed caption names, in the right region ('all': "
                   "share of captions right on everything, nothing extra)", se=_accuracy_errors(acc, truth))
        bleu, bleu_se = M.bleu_with_error(captions, [it.references for it in items], suite.seed)
        result.add(prefix, {"bleu": bleu}, len(items),
                   f"image->caption on real renders of {split} scenes: corpus BLEU-4 against "
                   f"{len(items[0].references)} captions of each scene (lower case, no punctuation)",
                   se={"bleu": bleu_se})


def speech_tasks(tasks: GenerationTasks, suite: EvalSuite, result: EvalResult) -> None:
    n = len(suite.speech)
    texts = tasks.speech_to_text(suite.speech)
    rates, errors = M.error_rates_with_errors(texts, suite.transcripts, suite.seed)
    result.add("", rates, n, "speech->text on validation clips: word / character error rate of the transcription "
               "against the transcript (lower case, no punctuation)", se=errors)
    units = tasks.text_to_speech_units(suite.transcripts)
    um, errors = M.unit_metrics_with_errors(units, suite.reference_units, suite.seed)
    result.add("tts_", um, n, "text->speech from validation transcripts: generated speech units against the "
               "speech tokenizer's units of the validation clip (unit_acc = 1 - edit distance / reference "
               "units; duration_ratio = generated / reference units)", se=errors)
