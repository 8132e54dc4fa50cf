"""One group of sampling settings (``SamplingSettings``): the callbacks read it as their ``sampling:`` argument,
``mot generate`` and ``mot eval`` as ``--sampling FILE`` plus one flag per field, with the same names and the
same defaults everywhere."""
from __future__ import annotations

import dataclasses
import math

import pytest
import yaml
from jsonargparse import ArgumentParser

from mot_lightning.callbacks import GenerationMetrics, SampleLogger
from mot_lightning.commands import eval as eval_cli
from mot_lightning.commands.generate import _parser as generate_parser
from mot_lightning.sampling import SamplingSettings, sampling_from_args

GROUP = {"temperature": 0.7, "top_k": 20, "guidance": 2.0, "sampler": "ddpm", "steps": 7, "seed": 3,
         "max_text_tokens": 12, "max_speech_units": 9, "batch_size": 5}


def callback_settings(cls, group: dict | None) -> SamplingSettings:
    """The callback as LightningCLI builds it from a YAML config (jsonargparse, ``init_args``)."""
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "callback")
    config = parser.parse_object({"callback": {} if group is None else {"sampling": group}})
    return parser.instantiate_classes(config).callback.settings


def command_settings(parser, argv: list[str]) -> SamplingSettings:
    args, _ = parser.parse_known_args(["--out", "unused", *argv])
    return sampling_from_args(args)


def test_one_yaml_group_gives_equal_settings_to_callbacks_generate_and_eval(tmp_path):
    path = tmp_path / "sampling.yaml"
    path.write_text(yaml.safe_dump(GROUP))
    expected = SamplingSettings(**GROUP)
    got = {"SampleLogger": callback_settings(SampleLogger, GROUP),
           "GenerationMetrics": callback_settings(GenerationMetrics, GROUP),
           "mot generate": command_settings(generate_parser(), ["--sampling", str(path)]),
           "mot eval": command_settings(eval_cli._parser(), ["--sampling", str(path)])}
    assert got == dict.fromkeys(got, expected)
    # a flag overrides the file's value, and only that value
    override = command_settings(generate_parser(), ["--sampling", str(path), "--steps", "11"])
    assert override == dataclasses.replace(expected, steps=11)


def test_defaults_are_the_dataclass_defaults_everywhere():
    default = SamplingSettings()
    assert SampleLogger().settings == GenerationMetrics().settings == default
    assert callback_settings(SampleLogger, None) == default
    assert command_settings(generate_parser(), []) == command_settings(eval_cli._parser(), []) == default
    flags = {f.name: v for f, v in zip(dataclasses.fields(SamplingSettings), ("0.5", "3", "1.5", "flow", "2", "9",
                                                                                 "4", "8", "2"))}
    argv = [a for name, value in flags.items() for a in (f"--{name}", value)]
    assert command_settings(eval_cli._parser(), argv) == SamplingSettings(
        temperature=0.5, top_k=3, guidance=1.5, sampler="flow", steps=2, seed=9, max_text_tokens=4,
        max_speech_units=8, batch_size=2)


@pytest.mark.parametrize("bad", [{"temperature": math.nan}, {"temperature": -1.0}, {"guidance": math.inf},
                                 {"top_k": 0}, {"sampler": "euler"}, {"steps": 0}, {"batch_size": 0}])
def test_bad_values_are_refused_naming_the_field(bad):
    [(name, _)] = bad.items()
    with pytest.raises(ValueError, match=name):
        SamplingSettings(**bad)


def test_a_file_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "sampling.yaml"
    path.write_text(yaml.safe_dump({"max_caption_tokens": 8}))
    with pytest.raises(ValueError, match="max_caption_tokens"):
        SamplingSettings.from_file(path)
