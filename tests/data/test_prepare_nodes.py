"""Two processes that believe they are on different nodes run ``prepare_data`` at the same moment
against one shared directory: the demo corpus is written once and the tokenizer fitted once, both end
with the same complete files, and no temporary file is left behind."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from tests.processes import start_script

REPO = Path(__file__).resolve().parents[2]

NODE_SCRIPT = r"""
import json, sys, time
from pathlib import Path
from mot_lightning.data.datamodule import MultiModalDataModule
from mot_lightning.data.options import DemoCorpus, LoaderConfig, TokenizerFiles
from mot_lightning.tokenizers.image_kmeans import KMeansImageConfig, KMeansImageTokenizer
from mot_lightning.tokenizers.text import ByteTokenizer

shared, node = Path(sys.argv[1]), sys.argv[2]
image = KMeansImageTokenizer(KMeansImageConfig(resolution=32, patch_size=8, codebook_size=8, iters=3))
dm = MultiModalDataModule(ByteTokenizer(), image, seq_len=256, loader=LoaderConfig(num_workers=0),
                          demo=DemoCorpus(str(shared / "demo"), train_docs=120, val_docs=8),
                          tokenizer_files=TokenizerFiles(str(shared / "tokenizers")))
(shared / f"ready-{node}").touch()
while not (shared / "go").exists():  # start together
    time.sleep(0.01)
dm.prepare_data()
dm.setup("validate")
docs = sum(int((b.tokens == dm.vocab.bos_id).sum()) for loader in dm.val_dataloader() for b in loader)
print(json.dumps({"docs": docs}))
"""


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_nodes_prepare_the_same_directory_at_once(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    procs = []
    for node in range(2):  # python -c NODE_SCRIPT shared node, forked from tests/processes.py's server
        env = {**os.environ, "NODE_RANK": str(node), "LOCAL_RANK": "0", "PYTHONPATH": str(REPO),
               "OMP_NUM_THREADS": "1"}
        procs.append(start_script(NODE_SCRIPT, [str(shared), str(node)], env, cwd=tmp_path, stderr_apart=True))
    deadline = time.monotonic() + 120
    while not all((shared / f"ready-{n}").exists() for n in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a node failed to start"
        time.sleep(0.05)
    (shared / "go").touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        outputs.append(out)

    fits = [out.count("fitting the image tokenizer") for out in outputs]
    assert sorted(fits) == [0, 1], outputs  # fitted once, by whichever node took the lock first
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert results[0] == results[1] == {"docs": 16}
    files = tree_digest(shared)
    assert not [f for f in files if ".partial" in f or f.endswith(".tmp")], sorted(files)
    assert len([f for f in files if f.startswith("tokenizers/image-KMeansImageTokenizer-")]) == 1
    assert "demo/manifest.json" in files

    # a third "node" afterwards finds everything complete and changes nothing
    before = tree_digest(shared)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    third = start_script(NODE_SCRIPT, [str(shared), "2"], env, cwd=tmp_path, stderr_apart=True)
    out, err = third.communicate(timeout=300)
    assert third.returncode == 0, err[-3000:]
    assert "fitting" not in out and tree_digest(shared) == {**before, "ready-2": tree_digest(shared)["ready-2"]}
