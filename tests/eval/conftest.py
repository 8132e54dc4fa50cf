"""A faithfulness scorer fitted once for the eval tests, and the app tests' demo corpus and tokenizers."""
from __future__ import annotations

from pathlib import Path

import pytest

from mot_lightning.eval.scorer import ScorerConfig, fit_scorer, save_scorer
from mot_lightning.eval.worlds import get_world
from tests.app.conftest import demo_env, transfusion_env  # noqa: F401  (fixtures shared with tests/app)

# a short fit on clean renders only (the default fit, with degradations, is what the benchmarks measure)
TEST_SCORER = ScorerConfig(steps=150, pool=1500, batch_size=64, lr=3e-3, augment=False)


@pytest.fixture(scope="session")
def scorer_file(tmp_path_factory) -> Path:
    """A fixed-world scorer at 32 px, fitted with ``TEST_SCORER``."""
    path = tmp_path_factory.mktemp("scorer") / "scorer-fixed-test.pt"
    save_scorer(fit_scorer(get_world("fixed"), 32, TEST_SCORER), path)
    return path
