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
# Inductor compiles its kernels in this process unless the environment names a count: a pool of compile workers
# (one per core by default) costs each test process that compiles seconds of start-up, and the other xdist worker
# holds the second core anyway. The kernels are the same.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from filelock import FileLock  # noqa: E402

from mot_lightning.eval.scorer import ScorerConfig, fit_scorer, save_scorer  # noqa: E402
from mot_lightning.eval.worlds import WORLD  # noqa: E402
from tests.app.conftest import CONFIGS, TRANSFUSION_ONE_STEP, run_fit  # noqa: E402

# a short fit on clean renders only (the default fit, with degradations, is what the benchmarks measure): it reads
# position, size and colour of the demo world's renders right on 0.85-0.99 of the groups, count 0.8, shape 0.4
# (the default fit: 0.91-1.0, benchmarks/README.md); the tests that need its readings are calibrated to it
TEST_SCORER = ScorerConfig(steps=300, pool=2000, batch_size=64, lr=3e-3, augment=False)
# the speech_runs: GenerationMetrics with small limits after every validation, SampleLogger after step 2
GEN_METRICS_LIMITS = {"n_prompts": "4", "n_heldout": "2", "n_speech": "2", "sampling.max_text_tokens": "8",
                      "sampling.max_speech_units": "6", "sampling.steps": "4"}
SAMPLES = ["--trainer.callbacks+=mot_lightning.callbacks.SampleLogger",
           "--trainer.callbacks.every_n_steps", "2", "--trainer.callbacks.n_samples", "2",
           "--trainer.callbacks.sampling.max_text_tokens", "8", "--trainer.callbacks.sampling.max_speech_units", "6"]
SPEECH_RUN = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1",
              "--data.loader.train_batches_per_epoch", "2"]


# Session fixtures that hold runs made lazily, part by part, in one process (their parts are not plain files a
# second process could pick up): every test asking for one runs on the same pytest-xdist worker.
IN_PROCESS_SHARED = ("fsdp2_runs", "ddp_runs", "controls")
# What a module costs, to hand the two workers the heaviest groups first: seconds of the modules that take
# most of a run (pytest --durations=0 with `-n 2` on 2 cores, summed per module, setup of the session fixtures
# they are first to ask for included; only their order matters, so round numbers), and any other test by its
# marks. A heavy module dealt out last keeps one worker busy while the other has finished.
MODULE_COST = {
    "tests/app/test_checkpoints.py": 135, "tests/model/test_compile.py": 80, "tests/app/test_resume_ddp.py": 80,
    "tests/app/test_scaling_guide.py": 75, "tests/app/test_sweep.py": 60,
    "tests/app/test_precision.py": 40, "tests/app/test_configs.py": 32, "tests/eval/test_data_metrics.py": 30,
    "tests/app/test_preemption.py": 29, "tests/data/test_procedural.py": 24, "tests/app/test_transfusion.py": 21,
    "tests/app/test_training.py": 17, "tests/app/test_throughput.py": 14, "tests/app/test_ema_generate.py": 13,
    "tests/app/test_progress.py": 13, "tests/data/test_failures.py": 9, "tests/app/test_run_identity.py": 9,
    "tests/world/test_procedural_world.py": 9, "tests/app/test_controls_distributed.py": 8,
    "tests/app/test_fault_injection.py": 6, "tests/eval/test_gen_metrics_app.py": 6, "tests/app/test_data_mix.py": 6,
}
COST = {"multiprocess": 5.0, "slow": 3.0}  # seconds per test by its marks (the most of them), else 0.2


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    # a pytest-xdist worker collects with its own options: xdist sets its "dist" to "no" and keeps
    # "loadgroup" (True under --dist loadgroup); without xdist, "dist" is what pyproject.toml's addopts say
    if getattr(config.option, "loadgroup", False) or config.getoption("dist", "no") == "loadgroup":
        group_for_xdist(items)


def group_for_xdist(items) -> None:
    """One pytest-xdist group per test module (its module fixtures run once), merged with every module that
    shares an ``IN_PROCESS_SHARED`` fixture with it; the items are ordered by group, most expensive group
    first (with ``--no-loadscope-reorder`` xdist deals groups out in this order), the same on every worker."""
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a

    for item in items:
        for name in IN_PROCESS_SHARED:
            if name in item.fixturenames:
                parent[find(item.nodeid.split("::")[0])] = find(name)
    cost: dict[str, float] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(find(module)))
        if module not in MODULE_COST:
            cost[find(module)] = cost.get(find(module), 0.0) + max([COST[m] for m in COST if m in item.keywords],
                                                                    default=0.2)
    for module in {item.nodeid.split("::")[0] for item in items} & MODULE_COST.keys():
        cost[find(module)] = cost.get(find(module), 0.0) + MODULE_COST[module]
    items.sort(key=lambda item: -cost[find(item.nodeid.split("::")[0])])  # stable: each group keeps its order


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def shared_dir(tmp_path_factory) -> Path:
    """The folder every process of this test session sees: the session's base temp dir, or under
    pytest-xdist the parent of the workers' base dirs (they share one ``pytest-<n>`` folder)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once_per_session(tmp_path_factory, name: str, make):
    """``make(folder)`` once per test session across pytest-xdist workers; its JSON result is kept beside the
    folder, so a second worker waits on the lock and reads it instead of making it again. A failed ``make``
    leaves no result, so the next worker to ask tries again (and fails the same way, in its own test)."""
    root = shared_dir(tmp_path_factory)
    folder, result = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not result.exists():
            folder.mkdir(exist_ok=True)
            result.write_text(json.dumps(make(folder)))
    return json.loads(result.read_text())


def _make_demo_env(root: Path) -> dict[str, str]:
    env = {"demo_dir": str(root / "demo"), "tokenizer_dir": str(root / "tokenizers")}
    run_fit(["--config", str(CONFIGS / "speech/mot.yaml"), "--trainer.fast_dev_run", "1"], env, root / "runs")
    return env


@pytest.fixture(scope="session")
def demo_env(tmp_path_factory) -> dict[str, str]:
    """Demo shards + fitted tokenizer files, made once by a real `mot fit` fast_dev_run."""
    return once_per_session(tmp_path_factory, "demo_env", _make_demo_env)


@pytest.fixture(scope="session")
def transfusion_env(demo_env, tmp_path_factory) -> dict[str, str]:
    """``demo_env`` plus the fitted latent-image tokenizer file of configs/transfusion/*.yaml, made once by a
    real 1-step run that fits it (``TRANSFUSION_ONE_STEP``; the file name depends only on the tokenizer config
    and the demo corpus, so every later run on it loads it). ``"fitting_run"``: that run's group (its logs);
    ``"fitted_file"``: the file."""
    def make(root: Path) -> dict[str, str]:
        tokenizers = Path(demo_env["tokenizer_dir"])
        before = set(tokenizers.glob("image-*.pt"))
        run_fit(TRANSFUSION_ONE_STEP, demo_env, root / "runs")
        [fitted] = set(tokenizers.glob("image-*.pt")) - before  # this run fitted it (no other run had)
        return {**demo_env, "fitting_run": str(root / "runs" / "transfusion" / "mot"), "fitted_file": str(fitted)}

    return once_per_session(tmp_path_factory, "transfusion_env", make)


@pytest.fixture(scope="session")
def scorer_file(tmp_path_factory) -> Path:
    """A demo-world scorer at 32 px, fitted with ``TEST_SCORER``."""
    def make(root: Path) -> str:
        save_scorer(fit_scorer(WORLD, 32, TEST_SCORER), root / "scorer-test.pt")
        return str(root / "scorer-test.pt")

    return Path(once_per_session(tmp_path_factory, "scorer", make))


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
    def make(root: Path) -> str:
        for variant in ("dense", "mot"):
            run_fit(["--config", str(CONFIGS / f"speech/{variant}.yaml"), *gen_metrics_callback(scorer_file),
                     *SAMPLES, *SPEECH_RUN], demo_env, root)
        return str(root)

    return Path(once_per_session(tmp_path_factory, "speech_runs", make))


@pytest.fixture(scope="session")
def fsdp2_runs(demo_env, scorer_file, tmp_path_factory):
    """The 2-process FSDP2 `mot fit` runs several test files check (``tests/app/distributed_runs.Fsdp2Runs``)."""
    from tests.app.distributed_runs import Fsdp2Runs

    return Fsdp2Runs(demo_env, scorer_file, tmp_path_factory.mktemp("fsdp2_runs"))
