"""Every shipped YAML parses; every CPU-runnable one trains one step (fast_dev_run)."""
import contextlib
import io
import math
from pathlib import Path

import pytest
import yaml

from mot_lightning.commands.fit import cli_main
from mot_lightning.commands.sweep import plan
from mot_lightning.model import PRESETS
from mot_lightning.run_identity import flatten
from tests.app.conftest import CONFIGS, ROOT, TRANSFUSION, run_fit

SETTINGS = sorted(p for p in CONFIGS.glob("*/*.yaml")
                  if p.parent.name in ("chameleon", "speech", "transfusion", "ablations"))
FRAGMENTS = sorted(p for p in CONFIGS.glob("*/*.yaml") if p.parent.name in ("model", "trainer", "experiments"))
CPU_MODELS = ["tiny", "cpu-small", "cpu-base", "chameleon-37m"]
# overlays that swap one tokenizer (and its fit settings) in a setting, and the settings they apply to
OVERLAYS = {"image_tokenizer": ("chameleon", "speech"), "text_tokenizer": ("chameleon", "speech", "transfusion")}
OVERLAY_PAIRS = sorted((overlay, CONFIGS / setting / f"{variant}.yaml")
                       for overlay in CONFIGS.glob("*_tokenizer/*.yaml")
                       for setting in OVERLAYS[overlay.parent.name] for variant in ("dense", "mot"))
VQ_FIT = ["--data.tokenizer_files.train.max_steps", "5", "--data.tokenizer_files.train.val_every_n_steps", "1000"]


def _rel(p):
    return str(p.relative_to(CONFIGS))


@pytest.mark.parametrize("path", SETTINGS + FRAGMENTS, ids=_rel)
def test_print_config(path, capsys):
    args = ["--config", str(path)] if path in SETTINGS else ["--config", str(CONFIGS / "speech/mot.yaml"),
                                                               "--config", str(path)]
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *args, "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["backbone"]["dim"] > 0


def test_dense_and_mot_differ_only_in_the_backbone():
    for setting in ("chameleon", "speech", "transfusion"):
        dense = yaml.safe_load((CONFIGS / setting / "dense.yaml").read_text())
        mot = yaml.safe_load((CONFIGS / setting / "mot.yaml").read_text())
        assert dense["model"]["backbone"].pop("sparsity") == "dense"
        assert mot["model"]["backbone"].pop("sparsity") == "mot"
        assert dense == mot


def test_ablations_differ_from_mot_only_in_the_backbone():
    mot = yaml.safe_load((CONFIGS / "speech/mot.yaml").read_text())
    mot_backbone = mot["model"].pop("backbone")
    ablations = sorted(CONFIGS.glob("ablations/*.yaml"))
    assert len(ablations) >= 8
    for path in ablations:
        cfg = yaml.safe_load(path.read_text())
        backbone = cfg["model"].pop("backbone")
        assert backbone != mot_backbone and cfg == mot, path.name


def test_model_fragments_match_the_code_presets():
    for path in CONFIGS.glob("model/*.yaml"):
        backbone = yaml.safe_load(path.read_text())["model"]["backbone"]
        assert PRESETS[path.stem] == backbone, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", SETTINGS, ids=_rel)
def test_fast_dev_run_settings(path, demo_env, tmp_path, request):
    extra = []
    if path.parent.name == "transfusion":  # loads the KL-VAE file the fixture fitted (in seconds)
        demo_env, extra = request.getfixturevalue("transfusion_env"), TRANSFUSION
    run_fit(["--config", str(path), "--config", str(CONFIGS / "trainer/cpu.yaml"),
             "--trainer.fast_dev_run", "1", *extra], demo_env, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("size", CPU_MODELS)
def test_fast_dev_run_cpu_model_sizes(size, demo_env, tmp_path):
    run_fit(["--config", str(CONFIGS / "speech/mot.yaml"), "--config", str(CONFIGS / f"model/{size}.yaml"),
             "--trainer.fast_dev_run", "1"], demo_env, tmp_path, tiny_model=False)


def test_mot_command_dispatch_and_clear_errors(capsys):
    from mot_lightning.commands.main import main

    main(["--help"])
    assert "compare" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="mot generate"):
        main(["predict"])
    with pytest.raises(SystemExit, match="unknown command 'fitt'"):
        main(["fitt"])


def test_old_flat_data_keys_fail_naming_the_new_key(tmp_path, capsys):
    """`--data.num_workers` or `data: {num_workers: ...}` (the layout before the grouped arguments)
    stops `mot` with the key's new place, on the command line and in a YAML alike."""
    old_yaml = tmp_path / "old.yaml"
    old_yaml.write_text("data:\n  demo_dir: data/demo\n  tokenizer_train: {max_steps: 5}\n")
    speech = ["--config", str(CONFIGS / "speech/mot.yaml")]
    for args, expected in ((["--data.num_workers", "0"], "data.num_workers -> data.loader.num_workers"),
                           (["--config", str(old_yaml)], "data.tokenizer_train -> data.tokenizer_files.train")):
        with pytest.raises(SystemExit) as exit_:
            cli_main(["fit", *speech, *args, "--print_config"])
        assert exit_.value.code == 2
        assert expected in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # the new keys parse
        cli_main(["fit", *speech, "--data.loader.num_workers", "0", "--data.demo.dir", "d", "--print_config"])
    assert exit_.value.code in (0, None)
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["loader"]["num_workers"] == 0 and data["demo"]["dir"] == "d"
    assert data["tokenizer_files"]["dir"] == "data/tokenizers"


def _resolved(*configs: Path) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *[a for c in configs for a in ("--config", str(c))], "--print_config"])
    assert exit_.value.code in (0, None)
    return flatten(yaml.safe_load(out.getvalue()))


@pytest.mark.parametrize("overlay,setting", OVERLAY_PAIRS, ids=lambda p: _rel(p))
def test_overlays_change_only_the_tokenizer_they_name(overlay, setting):
    """base + overlay resolves to base with only the overlay's own data.<key> sections changed: a dense/MoT
    pair on an overlay still differs in one line, and a k-means vs VQ-VAE pair only in its tokenizer."""
    base, merged = _resolved(setting), _resolved(setting, overlay)
    sections = {f"data.{key}" for key in yaml.safe_load(overlay.read_text())["data"]}
    changed = {k for k in base.keys() | merged.keys() if base.get(k) != merged.get(k)}
    assert changed and all(".".join(k.split(".")[:2]) in sections for k in changed), changed


def test_every_overlay_is_covered():
    assert {p.parent.name for p in CONFIGS.glob("*_tokenizer/*.yaml")} == set(OVERLAYS)
    assert len(OVERLAY_PAIRS) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("overlay,setting", [(CONFIGS / "image_tokenizer/vqvae.yaml", CONFIGS / "chameleon/mot.yaml"),
                                             (CONFIGS / "text_tokenizer/bpe.yaml", CONFIGS / "speech/mot.yaml")],
                         ids=lambda p: _rel(p))
def test_fast_dev_run_overlays(overlay, setting, demo_env, tmp_path):
    """The tokenizer an overlay names is fitted by prepare_data (the VQ-VAE for 5 steps here) and trained on."""
    run_fit(["--config", str(setting), "--config", str(overlay), "--config", str(CONFIGS / "trainer/cpu.yaml"),
             "--trainer.fast_dev_run", "1", *VQ_FIT], demo_env, tmp_path)
    kind = "image-VQImageTokenizer" if "image" in overlay.parent.name else "text-BPETokenizer"
    assert list(Path(demo_env["tokenizer_dir"]).glob(f"{kind}-*.pt"))


@pytest.mark.parametrize("sweep", sorted(CONFIGS.glob("sweeps/*.yaml")), ids=_rel)
def test_shipped_sweeps_plan_runs_of_existing_configs(sweep):
    spec = yaml.safe_load(sweep.read_text())
    jobs = plan(spec, spec["name"])
    points = [len((v.get("points") if isinstance(v, dict) else None) or spec.get("points") or [None])
              for v in spec["variants"].values()]  # a variant's own points, else all the sweep's
    grid = math.prod(len(values) for values in (spec.get("grid") or {}).values())
    assert len(jobs) == sum(points) * grid * len(spec.get("seeds", [0]))
    for job in jobs:
        configs = [job.args[i + 1] for i, a in enumerate(job.args) if a == "--config"]
        assert configs and all((ROOT / c).is_file() for c in configs), job.command()
