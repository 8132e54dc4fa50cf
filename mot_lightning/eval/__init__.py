"""Measuring what models generate (the paper's FID / CLIP score / CIDEr): the demo world and any data.

Files, in pipeline order:
    worlds.py        the demo world (both ``data.demo`` modes draw from it): groups, renders,
                     captions, the caption parser; deterministic eval prompts (``eval_items``)
    degrade.py       generic degradations (blur, block averages, low-pass, colour noise)
    scorer.py        the faithfulness scorer: a small CNN reading a picture back into groups per region;
                     fit-once files keyed by world, image size and config
    faithfulness.py  a picture against a caption, attribute by attribute, judged in the named region
    metrics.py       FID / KID (torchmetrics, scorer or local Inception features), BLEU, WER / CER,
                     speech-unit accuracy and duration ratio, each with its sampling error
    errors.py        sampling errors: binomial for accuracies, bootstrap for the rest; FID / KID from features
    features.py      any network by class_path with local weights (FID / KID features, classifiers)
    labels.py        the plug-in label scorer for labelled data: caption rule + picture classifier
    clip.py          CLIPScore from a local Hugging Face CLIP folder
    data_metrics.py  data other than the demo world: what ``DataMetrics`` configures, on validation pairs
    results.py       ``Metric`` (value, sample count, sampling error), ``EvalResult``, ``Sample``
    evaluate.py      ``EvalSuite`` (what stays fixed) + ``evaluate`` (one evaluation -> named metrics)
    grid.py          a PNG of generated pictures with their prompts and verdicts
    (``mot eval --ckpt ... --config ... --out DIR`` is ``commands/eval.py``: metrics.json + samples.png)

The training-time callback is ``callbacks/gen_metrics.py`` (``val/gen/<metric>``). Layering: worlds,
degrade, scorer, faithfulness and metrics import only ``world/`` and libraries; evaluate uses the
generation tasks (``sampling.py``) and a data module's public attributes; nothing here is imported by
the layers below.
"""
