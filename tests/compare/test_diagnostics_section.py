"""`mot compare` reads the diagnostics tags like any other: a section in table.md with the attention shares of
the groups side by side (mean ± sd over seeds), the per-tower tags and noise bins, and the two plots."""
from __future__ import annotations

from pathlib import Path

from mot_lightning.commands.compare import main
from tests.compare.events import linear, write_run

STEPS = range(0, 101, 10)


def _group(root: Path, name: str, image_to_text: list[float]) -> Path:
    group = root / "runs" / "speech" / name
    tower = "shared" if name == "dense" else "image"  # towers differ between the groups, as dense vs MoT
    for seed, share in enumerate(image_to_text):
        write_run(group, seed, {"train/loss": linear(STEPS, 2.0, 1 / 200),
                                "diag/attn/image_to_text/layer0": [(s, share) for s in STEPS],
                                "diag/attn/image_to_image/layer0": [(s, 1 - share) for s in STEPS],
                                "diag/update_ratio/image/ffn": [(s, 0.01 + seed * 1e-3) for s in STEPS],
                                "diag/grad_norm/image/ffn": [(s, 0.5) for s in STEPS],
                                f"diag/update_ratio/{tower}/attn": [(s, 0.02) for s in STEPS],
                                "val/val_seen/loss_image_t0": [(s, 0.3) for s in STEPS]},
                  experiment={"model": {"sparsity": name}})
    return group


def test_diagnostics_section_and_plots(tmp_path: Path, capsys):
    dense = _group(tmp_path, "dense", [0.2, 0.4, 0.6])
    mot = _group(tmp_path, "mot", [0.1, 0.1, 0.1])
    out = tmp_path / "out"
    main([str(mot), "--baseline", str(dense), "--out", str(out)])
    capsys.readouterr()
    table = (out / "table.md").read_text()
    section = table[table.index("## Diagnostics"):]
    assert "| query -> key | speech/dense | speech/mot |" in section  # the baseline first
    assert "| image -> text | 0.4 ± 0.2 | 0.1 ± 0 |" in section
    assert "| image -> image | 0.6 ± 0.2 | 0.9 ± 0 |" in section
    assert "text -> text" not in section  # no run logged it
    assert "| diag/update_ratio/image/ffn | 0.011 ± 0.001 | 0.011 ± 0.001 |" in section
    assert "| val/val_seen/loss_image_t0 |" in section
    assert (out / "attention_maps.png").stat().st_size > 0 and (out / "tower_curves.png").stat().st_size > 0


def test_no_diagnostics_tags_no_section(tmp_path: Path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for group in (a, b):
        write_run(group, 0, {"train/loss": linear(STEPS, 2.0, 1 / 200)})
    main([str(a), "--baseline", str(b), "--out", str(tmp_path / "out"), "--no-plots"])
    capsys.readouterr()
    assert "## Diagnostics" not in (tmp_path / "out" / "table.md").read_text()
