"""Shared test fixtures: tiny seeded inputs; the `gpu` marker skips without CUDA; and the session fixtures
tests/app and tests/eval share (defined once here, so a session makes each once): the demo corpus with
fitted tokenizers, a faithfulness scorer, and the 2-process FSDP2 runs several files check."""
from __future__ import annotations

import os

# Before torch loads OpenMP: spinning threads slow every step 10-50x once the multi-process tests'
# ranks and data workers share the 2 CI cores (the `mot` command sets the same default).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from mot_lightning.eval.scorer import ScorerConfig, fit_scorer, save_scorer  # noqa: E402
from mot_lightning.eval.worlds import get_world  # noqa: E402
from tests.app.conftest import CONFIGS, TRANSFUSION_ONE_STEP, run_fit  # noqa: E402

# a short fit on clean renders only (the default fit, with degradations, is what the benchmarks measure)
TEST_SCORER = ScorerConfig(steps=150, pool=1500, batch_size=64, lr=3e-3, augment=False)


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


@pytest.fixture(scope="session")
def fsdp2_runs(demo_env, scorer_file, tmp_path_factory):
    """The 2-process FSDP2 `mot fit` runs several test files check (``tests/app/distributed_runs.Fsdp2Runs``)."""
    from tests.app.distributed_runs import Fsdp2Runs

    return Fsdp2Runs(demo_env, scorer_file, tmp_path_factory.mktemp("fsdp2_runs"))
