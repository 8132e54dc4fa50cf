"""Remote shards: training, validation and tokenizer fitting over a real HTTP server on 127.0.0.1 (a
dropped connection mid-shard is counted and skipped), `pipe:` sources, and a clear message for an
object store whose fsspec backend is not installed."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections import Counter

import pytest

from mot_lightning.data.documents import parse_sample
from mot_lightning.data.sources import SourceConfig
from mot_lightning.modality import Modality
from mot_lightning.tokenizers import fit_inputs
from mot_lightning.tokenizers.media import IMAGE_EXTS

from .helpers import make_datamodule, mixed_corpus, unpack_checked


class ShardHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; a file whose name holds ``drop`` is cut: the full Content-Length is announced,
    half the bytes sent, then the socket closed (a connection dropped mid-shard)."""

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        if "drop" not in self.path:
            return super().do_GET()
        with open(self.directory + self.path, "rb") as fh:
            data = fh.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(ShardHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def docs_of(dm, name: str) -> Counter:
    dm.setup("validate")
    loader = dict(zip(dm.val_set_names, dm.val_dataloader()))[name]
    return Counter(tuple(d.tolist()) for d in unpack_checked(list(loader), dm.vocab))


def test_http_shards_read_as_local_ones_and_a_dropped_connection_is_skipped(server, tmp_path):
    root, base = server
    samples = mixed_corpus(root, n=24, shards=4)
    shutil.copy(root / "mixed-000003.tar", root / "drop-000000.tar")
    remote = [SourceConfig("web", f"{base}/mixed-{{000000..000003}}.tar")]
    local = [SourceConfig("web", str(root / "mixed-{000000..000003}.tar"))]
    over_http = make_datamodule(tmp_path, remote, val_sets=remote, num_workers=2)
    expected = Counter(tuple(over_http.encoder.encode(parse_sample(s, frozenset(Modality), 32)).tolist())
                       for s in samples)
    assert docs_of(over_http, "web") == expected
    assert docs_of(make_datamodule(tmp_path, local, val_sets=local), "web") == expected

    cut = [SourceConfig("cut", [f"{base}/mixed-000000.tar", f"{base}/drop-000000.tar",
                                f"{base}/mixed-000001.tar"])]
    dm = make_datamodule(tmp_path, cut, val_sets=cut, num_workers=0)
    got = docs_of(dm, "cut")
    assert dm.skip_counts("val")["unreadable_shard"] == 1
    whole = Counter(tuple(dm.encoder.encode(parse_sample(s, frozenset(Modality), 32)).tolist())
                    for s in samples[0::4] + samples[1::4])
    assert set(got) <= set(expected)  # what was read of the cut shard before the drop is whole documents
    assert (got & whole) == whole  # both intact shards read in full, the run went on

    dm = make_datamodule(tmp_path, remote, val_sets=[], num_workers=2, train_batches_per_epoch=4)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(int((b.tokens != dm.vocab.pad_id).sum()) > 0 for b in batches)


def test_tokenizers_fit_on_remote_shards(server, tmp_path):
    """The default fit data is every training source's URLs, here one source's list of URLs over HTTP."""
    from mot_lightning.data.options import TokenizerFiles
    from mot_lightning.tokenizers.image_kmeans import KMeansImageConfig, KMeansImageTokenizer

    root, base = server
    mixed_corpus(root, n=24, shards=4)
    images = list(fit_inputs.iter_items(f"{base}/mixed-{{000000..000003}}.tar", IMAGE_EXTS, lambda raw: raw))
    assert len(images) == 12  # 6 pairs + 6 interleaved documents hold an image each
    image = KMeansImageTokenizer(KMeansImageConfig(resolution=32, patch_size=8, codebook_size=4, iters=2))
    sources = [SourceConfig("web", [f"{base}/mixed-000000.tar", f"{base}/mixed-{{000001..000003}}.tar"])]
    dm = make_datamodule(tmp_path, sources, val_sets=sources, image_tokenizer=image, num_workers=0,
                         tokenizer_files=TokenizerFiles(str(tmp_path / "tokenizers")))
    dm.prepare_data()
    dm.setup("validate")
    assert dm.tokenizers[Modality.IMAGE].is_fitted and not image.is_fitted
    assert len(list((tmp_path / "tokenizers").glob("image-KMeansImageTokenizer-*.pt"))) == 1
    assert sum(docs_of(dm, "web").values()) == 24


def test_pipe_sources_and_missing_object_store_backends(tmp_path):
    mixed_corpus(tmp_path, n=8, shards=2)
    piped = [SourceConfig("p", [f"pipe:cat {tmp_path}/mixed-000000.tar", f"pipe:cat {tmp_path}/mixed-000001.tar"])]
    assert sum(docs_of(make_datamodule(tmp_path, piped, val_sets=piped), "p").values()) == 8
    try:
        import s3fs  # noqa: F401
    except ImportError:
        s3 = [SourceConfig("bucket", "s3://my-bucket/shards-{000000..000009}.tar")]
        with pytest.raises(ImportError, match=r"source 'bucket': reading s3:// URLs needs .*s3fs"):
            make_datamodule(tmp_path, s3, val_sets=[]).prepare_data()
        with pytest.raises(ImportError, match="s3fs"):
            fit_inputs.resolve("s3://my-bucket/shards-{000000..000009}.tar", IMAGE_EXTS)
    with pytest.raises(ValueError, match="no reader for nosuch:// URLs"):
        make_datamodule(tmp_path, [SourceConfig("x", "nosuch://a/b.tar")], val_sets=[]).prepare_data()
