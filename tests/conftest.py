"""Shared test fixtures: tiny seeded inputs; the `gpu` marker skips without CUDA; and the session fixtures
tests/app and tests/eval share (defined once here, so a session makes each once): the demo corpus with
fitted tokenizers, a faithfulness scorer, short speech runs and the 2-process FSDP2 runs several files check."""
from __future__ import annotations

import os

# Before torch loads OpenMP: spinning threads slow every step 10-50x once the multi-process tests'
# ranks and data workers share the 2 CI cores (the `mot` command sets the same default).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One intra-op thread unless the environment names a count: the tests' tensors are tiny, where more threads
# only add synchronisation (on the 2 CI cores a test file of in-process runs took 1.3x as long with 2 threads,
# a sampling test 2.3x), and every rank and `mot` process the tests start runs one thread already. Thread
# counts are varied explicitly (README: the numerics tests under OMP_NUM_THREADS=1 and =2).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from mot_lightning.eval.scorer import ScorerConfig, fit_scorer, save_scorer  # noqa: E402
from mot_lightning.eval.worlds import get_world  # noqa: E402
from tests.app.conftest import CONFIGS, TRANSFUSION_ONE_STEP, run_fit  # noqa: E402

# a short fit on clean renders only (the default fit, with degradations, is what the benchmarks measure)
TEST_SCORER = ScorerConfig(steps=150, pool=1500, batch_size=64, lr=3e-3, augment=False)
# the speech_runs: GenerationMetrics with small limits after every validation, SampleLogger after step 2
GEN_METRICS_LIMITS = {"n_prompts": "4", "n_heldout": "2", "n_speech": "2", "max_caption_tokens": "8",
                      "max_speech_units": "6", "diffusion_steps": "4"}
SAMPLES = ["--trainer.callbacks+=mot_lightning.callbacks.SampleLogger",
           "--trainer.callbacks.every_n_steps", "2", "--trainer.callbacks.n_samples", "2",
           "--trainer.callbacks.max_caption_tokens", "8", "--trainer.callbacks.max_speech_units", "6"]
SPEECH_RUN = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1",
              "--data.loader.train_batches_per_epoch", "2"]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def demo_env(tmp_path_factory) -> dict[str, str]:
    """Demo shards + fitted tokenizer files, made once by a real `mot fit` fast_dev_run."""
    root = tmp_path_factory.mktemp("demo_env")
    env = {"demo_dir": str(root / "demo"), "tokenizer_dir": str(root / "tokenizers")}
    run_fit(["--config", str(CONFIGS / "speech/mot.yaml"), "--trainer.fast_dev_run", "1"], env, root / "runs")
    return env


@pytest.fixture(scope="session")
def transfusion_env(demo_env, tmp_path_factory) -> dict[str, str]:
    """``demo_env`` plus the fitted latent-image tokenizer file of configs/transfusion/*.yaml, made once by a
    real 1-step run that fits it (``TRANSFUSION_ONE_STEP``; the file name depends only on the tokenizer config,
    so every later run loads it). ``"fitting_run"``: that run's group (its logs); ``"fitted_file"``: the file."""
    save_dir = tmp_path_factory.mktemp("transfusion_env") / "runs"
    tokenizers = Path(demo_env["tokenizer_dir"])
    before = set(tokenizers.glob("*.pt"))
    run_fit(TRANSFUSION_ONE_STEP, demo_env, save_dir)
    [fitted] = set(tokenizers.glob("*.pt")) - before  # this run fitted it (no other run had)
    return {**demo_env, "fitting_run": str(save_dir / "transfusion" / "mot"), "fitted_file": str(fitted)}


@pytest.fixture(scope="session")
def scorer_file(tmp_path_factory) -> Path:
    """A fixed-world scorer at 32 px, fitted with ``TEST_SCORER``."""
    path = tmp_path_factory.mktemp("scorer") / "scorer-fixed-test.pt"
    save_scorer(fit_scorer(get_world("fixed"), 32, TEST_SCORER), path)
    return path


def gen_metrics_callback(scorer_file: Path) -> list[str]:
    """`mot fit` arguments adding GenerationMetrics with ``GEN_METRICS_LIMITS`` and the scorer ``scorer_file``."""
    limits = [a for k, v in GEN_METRICS_LIMITS.items() for a in (f"--trainer.callbacks.{k}", v)]
    return ["--trainer.callbacks+=mot_lightning.callbacks.GenerationMetrics", *limits,
            "--trainer.callbacks.scorer_file", str(scorer_file)]


@pytest.fixture(scope="session")
def speech_runs(demo_env, scorer_file, tmp_path_factory) -> Path:
    """A dense and a MoT run of the speech setting under one save dir (``<dir>/speech/{dense,mot}``): 2 steps,
    validation (1 batch) with generation metrics after each, samples after step 2. Checked by
    tests/eval/test_gen_metrics_app.py; their checkpoints serve test_checkpoints and test_generate, the MoT
    run's samples test_samples_callback."""
    root = tmp_path_factory.mktemp("speech_runs")
    for variant in ("dense", "mot"):
        run_fit(["--config", str(CONFIGS / f"speech/{variant}.yaml"), *gen_metrics_callback(scorer_file), *SAMPLES,
                 *SPEECH_RUN], demo_env, root)
    return root


@pytest.fixture(scope="session")
def fsdp2_runs(demo_env, scorer_file, tmp_path_factory):
    """The 2-process FSDP2 `mot fit` runs several test files check (``tests/app/distributed_runs.Fsdp2Runs``)."""
    from tests.app.distributed_runs import Fsdp2Runs

    return Fsdp2Runs(demo_env, scorer_file, tmp_path_factory.mktemp("fsdp2_runs"))
