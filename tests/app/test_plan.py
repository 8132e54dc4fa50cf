"""`mot plan` reads the `mot fit` YAML files and flags and prints parameters, FLOPs and memory per rank."""
from __future__ import annotations

from mot_lightning.commands.plan import main
from tests.app.conftest import CONFIGS


def test_plan_of_the_7b_mot_under_fsdp2(capsys):
    main(["--config", str(CONFIGS / "speech/mot.yaml"), "--config", str(CONFIGS / "model/chameleon-7b.yaml"),
          "--config", str(CONFIGS / "trainer/fsdp2.yaml"), "--devices", "8", "--precision", "bf16-mixed",
          "--seq-len", "4096", "--batch-size", "1", "--activation-checkpointing", "true", "--gpu-memory", "24"])
    out = capsys.readouterr().out
    assert "mot, 3 tower(s), dim 4096 x 32 layers" in out
    assert "by owner: shared 536.87M, text 6.45G, image 6.45G, speech 6.45G" in out
    assert "fsdp on 8 rank(s), weights 4 B, activations 2 B, activation checkpointing True" in out
    assert "H100 80GB: yes" in out and "given 24GB: no" in out


def test_plan_table_covers_every_paper_preset(capsys):
    main(["--table"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| chameleon-")
            or line.startswith("| transfusion-")]
    assert len(rows) == len(list(CONFIGS.glob("model/chameleon-*.yaml"))) + len(
        list(CONFIGS.glob("model/transfusion-*.yaml")))
    assert all(row.count("GB") == 4 for row in rows)
