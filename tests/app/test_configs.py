"""Every shipped YAML parses; every CPU-runnable one trains one step (fast_dev_run)."""
import pytest
import yaml

from mot_lightning.lit_cli import cli_main
from mot_lightning.model import PRESETS
from tests.app.conftest import CONFIGS, TRANSFUSION, run_fit

SETTINGS = sorted(p for p in CONFIGS.glob("*/*.yaml")
                  if p.parent.name in ("chameleon", "speech", "transfusion", "ablations"))
FRAGMENTS = sorted(p for p in CONFIGS.glob("*/*.yaml") if p.parent.name in ("model", "trainer"))
CPU_MODELS = ["tiny", "cpu-small", "cpu-base", "chameleon-37m"]


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
    from mot_lightning.cli import main

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
