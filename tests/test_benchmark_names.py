"""The benchmark scripts can share the import path with the libraries: ``benchmarks/gpu_check.sh`` puts
``benchmarks/`` on ``PYTHONPATH`` so that ``mot fit`` can load its ``gpu_check.StepProbe`` callback. A script
named like an installed module would then be imported in that module's place. The tokenizer benchmark,
once named after Hugging Face's ``tokenizers`` package (which the BPE tokenizer and ``transformers`` load),
did that, and every fit of the GPU check stopped at its argument parsing."""
from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_no_benchmark_script_is_named_like_an_installed_module():
    scripts = sorted(BENCHMARKS.glob("*.py"))
    assert len(scripts) > 10 and any(p.stem == "gpu_check" for p in scripts)
    shadowed = {}
    for script in scripts:
        spec = importlib.util.find_spec(script.stem)
        if spec is not None and spec.origin is not None and Path(spec.origin).resolve() != script:
            shadowed[script.name] = spec.origin
    assert not shadowed, f"rename these benchmark scripts, they hide installed modules: {shadowed}"
