"""Data tests: offline tokenizer, document split, uint16 files + meta.json, load_tokens errors,
pinned-download errors and the Hugging Face path (data/hub.py) against a local fake Hub.
Never uses the network."""
import gzip
import hashlib
import http.server
import importlib.util
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

import conftest
from data import build, common, hub
from data.build import TokenWriter, dedup_prefixes, split_documents, write_dataset
from data.common import EOT, ROOT, load_meta, load_tokens
from util import UserError

needs_bpe = conftest.needs_bpe()


# ---------------------------------------------------------------- tokenizer

@needs_bpe
@pytest.mark.parametrize("text, ids", [
    ("Hello world", [15496, 995]),
    ("hello world", [31373, 995]),
    ("Hello, my dog is cute", [15496, 11, 616, 3290, 318, 13779]),
])
def test_gpt2_ids(text, ids):
    assert common.gpt2_encoding().encode(text) == ids


@needs_bpe
def test_gpt2_special_and_vocab():
    enc = common.gpt2_encoding()
    assert enc.encode("hello <|endoftext|>", allowed_special="all") == [31373, 220, 50256]
    assert enc.encode_ordinary("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]
    assert enc.n_vocab == 50257 and enc.eot_token == EOT == 50256 and enc.max_token_value == 50256
    text = "def f(x):\n    return x**2  # ünïcödé ✓ 数学\n\n\t  trailing  "
    assert enc.decode(enc.encode_ordinary(text)) == text
    assert common.gpt2_encoding() is enc  # built once per process


@needs_bpe
def test_encode_documents_appends_eot():
    tokens = build.encode_documents(["Hello world", "hello world"])
    assert tokens.dtype == np.uint16 and tokens.tolist() == [15496, 995, EOT, 31373, 995, EOT]
    serial = build.encode_documents(["Hello world", "hello world"], num_threads=1)
    assert np.array_equal(serial, tokens)


# ---------------------------------------------------------------- documents and splits

def test_split_is_deterministic_disjoint_complete():
    docs = [f"document {i}\n" * (i % 7 + 1) for i in range(200)]
    train, val = split_documents(docs + docs[:10] + ["", "  \n"], val_fraction=0.1, seed=1337)
    assert len(val) == 20 and len(train) == 180
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(docs)
    assert split_documents(docs, 0.1, 1337) == (train, val)
    assert split_documents(docs, 0.1, 1338) != (train, val)
    assert len(split_documents(docs[:3], 0.001, 0)[1]) == 1  # val never empty
    with pytest.raises(UserError):
        split_documents(["only one"], 0.1, 0)


def test_dedup_prefixes_keeps_the_full_document():
    full = "The Economic Policy Institute, or EPI, said so. " * 5
    assert dedup_prefixes([full[:60], "other", full, "other"]) == ["other", full]


@needs_bpe
def test_prepare_embedded_max_tokens_keeps_whole_documents(tmp_path):
    docs = [f"Document number {i} is here." for i in range(50)]
    meta = build.prepare_embedded(tmp_path, docs, 0.1, 1337, {"domain": "t"}, max_tokens=20)
    train = load_tokens(tmp_path, "train")
    assert 20 <= meta["tokens"]["train"] < 30 and train[-1] == EOT
    assert meta["documents"] == {"train": int(np.count_nonzero(train == EOT)), "val": 5}


# ---------------------------------------------------------------- token files and load_tokens

def write_fake(out_dir, train=(1, 2, EOT, 50255, EOT), val=(7, EOT)):
    writers = {s: TokenWriter(Path(out_dir) / f"{s}.bin") for s in ("train", "val")}
    writers["train"].write(np.array(train), 2)
    writers["val"].write(np.array(val), 1)
    return write_dataset(out_dir, writers, {"domain": "fake", "source": "test"})


def test_uint16_round_trip(tmp_path):
    meta = write_fake(tmp_path)
    assert load_meta(tmp_path) == meta == json.loads((tmp_path / "meta.json").read_text())
    assert meta["tokens"] == {"train": 5, "val": 2} and meta["documents"] == {"train": 2, "val": 1}
    train = load_tokens(tmp_path, "train")
    assert train.dtype == np.uint16 and train.tolist() == [1, 2, EOT, 50255, EOT]
    assert load_tokens(tmp_path, "val").tolist() == [7, EOT]
    train_bytes = (tmp_path / "train.bin").read_bytes()
    assert meta["sha256"]["train"] == hashlib.sha256(train_bytes).hexdigest()
    assert not list(tmp_path.glob("*.tmp"))


def one_line_error(fn, *args):
    with pytest.raises(UserError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg and "prepare.py" in msg, msg
    return msg


def test_load_tokens_errors(tmp_path):
    assert "meta.json is missing" in one_line_error(load_tokens, tmp_path, "train")
    write_fake(tmp_path)
    assert "has no split 'test'" in one_line_error(load_tokens, tmp_path, "test")
    (tmp_path / "val.bin").unlink()
    assert "val.bin is missing" in one_line_error(load_tokens, tmp_path, "val")
    with open(tmp_path / "train.bin", "r+b") as f:
        f.truncate(8)
    assert "truncated" in one_line_error(load_tokens, tmp_path, "train")
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "dtype": "int32"}))
    assert "dtype='int32'" in one_line_error(load_tokens, tmp_path, "train")
    (tmp_path / "meta.json").write_text("{not json")
    assert "not valid JSON" in one_line_error(load_meta, tmp_path)


def test_error_names_the_prepare_command(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert common._fix_command(ROOT / "data" / "web") == "python data/web/prepare.py"
    assert common._fix_command(ROOT / "out" / "web") == \
        "python data/web/prepare.py --out_dir out/web"


@needs_bpe
def test_byte_level_folder_has_the_same_documents(tmp_path):
    docs = [f"doc {i}: caf\u00e9 \u2192 {'x' * i}" for i in range(12)]
    gpt2 = build.prepare_embedded(tmp_path / "web", docs, 0.25, 7, {})
    raw = build.prepare_embedded(tmp_path / "web_bytes", docs, 0.25, 7, {}, tokenizer="bytes")
    assert raw["vocab_size"] == 257 and raw["eot"] == 256 and raw["tokenizer"] == "bytes"
    assert load_meta(tmp_path / "web_bytes")["tokenizer"] == "bytes"
    enc = common.gpt2_encoding()
    bytes_per_token = common.token_bytes("gpt2")
    for split in ("train", "val"):
        assert raw["documents"][split] == gpt2["documents"][split]
        t = np.asarray(load_tokens(tmp_path / "web", split))
        b = np.asarray(load_tokens(tmp_path / "web_bytes", split))
        text = lambda ids: enc.decode([i for i in ids if i != EOT])
        assert bytes(b[b != 256].astype(np.uint8)).decode() == text(t.tolist())
        assert int(bytes_per_token[t].sum()) == int((b != 256).sum())  # bits per byte agree
    assert common._fix_command(ROOT / "data" / "web_bytes").endswith(
        "data/web/prepare.py --tokenizer bytes")


@pytest.mark.parametrize("domain", ["web", "math", "code", "c4"])
def test_prepared_corpus(domain):
    data_dir = ROOT / "data" / domain
    if not (data_dir / "meta.json").exists():
        pytest.skip(f"run python data/{domain}/prepare.py first")
    meta = load_meta(data_dir)
    for split in ("train", "val"):
        tokens = load_tokens(data_dir, split)
        assert len(tokens) == meta["tokens"][split] > 0 and tokens[-1] == EOT
        assert int(np.count_nonzero(tokens == EOT)) == meta["documents"][split]
        assert int(tokens.max()) <= EOT


def test_chinese_stories_are_cut_before_the_question():
    """data/zh: each prompt's story without the question and answer choices after it; repeated
    stories once."""
    spec = importlib.util.spec_from_file_location("zh_prepare", ROOT / "data" / "zh" / "prepare.py")
    zh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zh)
    line = lambda story: json.dumps({"input": [{"role": "system", "content": "s"}, {
        "role": "user", "content": story + zh.QUESTION + " A) x B) y"}], "ideal": "A"})
    jsonl = "\n".join([line("三人出门。\n"), line("一个故事"), line("三人出门。")]).encode()
    assert zh.stories(jsonl) == ["三人出门。", "一个故事"]


# ---------------------------------------------------------------- pinned downloads (pip is faked)

def test_pip_download_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "CACHE_DIR", tmp_path)

    def fail(cmd, **kw):
        return subprocess.CompletedProcess(
            cmd, 1, "", "WARNING: retrying\nERROR: No matching distribution found\n")
    monkeypatch.setattr(common.subprocess, "run", fail)
    with pytest.raises(UserError, match="pip download mpmath==1.3.0 failed: ERROR: No matching"):
        common.pip_download("mpmath")

    def wrong_file(cmd, **kw):
        (Path(cmd[cmd.index("-d") + 1]) / common.PINNED["mpmath"][1]).write_bytes(b"not the wheel")
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(common.subprocess, "run", wrong_file)
    with pytest.raises(UserError, match="sha256") as e:
        common.pip_download("mpmath")
    assert "\n" not in str(e.value) and not (tmp_path / "pip" / common.PINNED["mpmath"][1]).exists()


# ---------------------------------------------------------------- fake Hugging Face Hub

def shard(texts):
    lines = (json.dumps({"text": t, "url": "x"}) + "\n" for t in texts)
    return gzip.compress("".join(lines).encode())


class FakeHub(http.server.BaseHTTPRequestHandler):
    files = {}  # repo -> {path: bytes}
    lfs = True
    faults = []  # (kind, what): the next request of kind "api" or "cdn" gets status `what`, or
    ranges = []  # with "drop" half its body and a closed connection; the cdn's Range headers

    def fault(self, kind):
        for i, (k, what) in enumerate(self.faults):
            if k == kind:
                return self.faults.pop(i)[1]
        return None

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        parts = urllib.parse.unquote(url.path).split("/")
        if parts[1] == "cdn":
            self.ranges.append(self.headers.get("Range"))
        fault = self.fault({"api": "api", "cdn": "cdn"}.get(parts[1]))
        if isinstance(fault, int):
            self.send_response(fault)
            if fault == 429:
                self.send_header("Retry-After", "3")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if parts[1:3] == ["api", "datasets"]:  # /api/datasets/{org}/{name}/tree/{rev}/{path}
            files = sorted(self.files["/".join(parts[3:5])].items())
            page = int(urllib.parse.parse_qs(url.query).get("page", ["0"])[0])
            entries = [{"type": "directory", "path": "en"}] + [self.entry(p, d) for p, d in files]
            body = json.dumps(entries[page * 2:page * 2 + 2]).encode()
            self.send_response(200)
            if page * 2 + 2 < len(entries):  # two entries per page: exercises the Link header
                self.send_header("Link", f'<{url.path}?recursive=true&page={page + 1}>; rel="next"')
        elif parts[1] == "datasets":  # /datasets/{org}/{name}/resolve/...: redirect like the Hub
            self.send_response(302)
            self.send_header("Location", "/cdn/" + "/".join(parts[2:4] + parts[6:]))
            self.end_headers()
            return
        elif parts[1] == "cdn":
            data = self.files["/".join(parts[2:4])]["/".join(parts[4:])]
            start = int(self.headers.get("Range", "bytes=0-")[6:-1])
            body = data[start:]
            self.send_response(206 if start else 200)
        else:
            self.send_response(404)
            body = b""
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # "drop": the whole body promised, half sent, the connection closed (HTTP/1.0)
        self.wfile.write(body[:len(body) // 2] if fault == "drop" else body)

    def entry(self, path, data):
        if self.lfs:
            return {"type": "file", "path": path, "size": 134, "oid": "0" * 40,
                    "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}}
        return {"type": "file", "path": path, "size": len(data),
                "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub():
    FakeHub.lfs, FakeHub.faults, FakeHub.ranges = True, [], []
    FakeHub.files = {
        "allenai/c4": {
            "en/c4-train.00000-of-00002.json.gz":
                shard([f"Train document {i}." for i in range(300)]),
            "en/c4-train.00001-of-00002.json.gz":
                shard([f"More train text {i}." for i in range(300)]),
            "en/c4-validation.00000-of-00001.json.gz":
                shard(["Validation one.", "Validation two."]),
            "en/README.md": b"not a shard"},
        "fake/owt": {"data/train-00000-of-00001.json.gz":
                     shard([f"Web page number {i}." for i in range(1000)])},
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_hub_listing_and_resumed_download(fake_hub, tmp_path):
    files = hub.hf_list_files(fake_hub, "allenai/c4", "en/c4-train.*.json.gz")
    assert [f["path"] for f in files] == ["en/c4-train.00000-of-00002.json.gz",
                                          "en/c4-train.00001-of-00002.json.gz"]
    data = FakeHub.files["allenai/c4"][files[0]["path"]]
    dest = tmp_path / "allenai__c4" / files[0]["path"]
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(data[:40])  # an interrupted earlier download
    assert hub.hf_download(fake_hub, "allenai/c4", files[0], tmp_path) == dest
    assert dest.read_bytes() == data and not dest.with_name(dest.name + ".part").exists()
    FakeHub.lfs = False  # plain git files are checked against their blob sha1
    info = hub.hf_list_files(fake_hub, "allenai/c4", "en/c4-validation.*.json.gz")[0]
    assert hub.hf_download(fake_hub, "allenai/c4", info, tmp_path).read_bytes() == \
        FakeHub.files["allenai/c4"][info["path"]]
    bad = {**files[1], "lfs": {"oid": "0" * 64, "size": files[1]["lfs"]["size"]}}
    with pytest.raises(UserError, match="sha256"):
        hub.hf_download(fake_hub, "allenai/c4", bad, tmp_path)
    with pytest.raises(UserError, match="no files matching"):
        hub.hf_list_files(fake_hub, "allenai/c4", "en/nothing.*.json.gz")


@needs_bpe
def test_hub_prepare_official_val_split(fake_hub, tmp_path):
    hf = {"train": ("allenai/c4", "en/c4-train.*.json.gz"),
          "val": ("allenai/c4", "en/c4-validation.*.json.gz"), "column": "text", "licence": "test"}
    meta = hub.prepare_hf(tmp_path, hf, fake_hub, "main", None, 0.0005, 2357, max_tokens=500)
    assert meta["documents"]["val"] == 2 and meta["tokens"]["val"] == len(build.encode_documents(
        ["Validation one.", "Validation two."]))
    assert 500 <= meta["tokens"]["train"] < 500 + 256 * 8  # stops after the batch that reaches it
    # shard 2 untouched
    assert [f["path"] for f in meta["files"]][-1] == "en/c4-train.00000-of-00002.json.gz"
    enc = common.gpt2_encoding()
    first = enc.decode(load_tokens(tmp_path, "train")[:6].tolist())
    assert first.startswith("Train document 0.<|endoftext|>")


@needs_bpe
def test_hub_prepare_held_out_split_and_failure_keeps_old_output(fake_hub, tmp_path):
    # "*.json.gz" lists the root
    hf = {"train": ("fake/owt", "*.json.gz"), "val": None, "column": "text", "licence": "test"}
    meta = hub.prepare_hf(tmp_path, hf, fake_hub, "main", None, 0.05, 2357, num_proc=2,
                          batch_docs=100)
    assert meta["documents"]["train"] + meta["documents"]["val"] == 1000
    assert 20 <= meta["documents"]["val"] <= 90
    again = hub.prepare_hf(tmp_path / "again", hf, fake_hub, "main", None, 0.05, 2357,
                           batch_docs=37)
    assert again["sha256"] == meta["sha256"]  # same split whatever the batching and process count
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.*")}
    FakeHub.files["fake/owt"]["data/train-00000-of-00001.json.gz"] = shard(["changed"])
    (tmp_path / "raw" / "fake__owt" / "data" / "train-00000-of-00001.json.gz").unlink()
    FakeHub.lfs = False
    hf_bad = {**hf, "train": ("fake/owt", "data/*.parquet")}
    with pytest.raises(UserError):
        hub.prepare_hf(tmp_path, hf_bad, fake_hub, "main", None, 0.05, 2357)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.*")} == before


@needs_bpe
def test_prepare_script_cli_against_fake_hub(fake_hub, tmp_path):
    out = tmp_path / "c4"
    r = subprocess.run([sys.executable, str(ROOT / "data" / "c4" / "prepare.py"), "--source", "hf",
                        "--endpoint", fake_hub, "--out_dir", str(out), "--max_tokens", "300",
                        "--num_proc", "1"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "HF_TOKEN": ""})
    assert r.returncode == 0, r.stderr
    assert load_meta(out)["documents"]["val"] == 2
    r = subprocess.run([sys.executable, str(ROOT / "data" / "c4" / "prepare.py"), "--source", "hf",
                        "--endpoint", "http://127.0.0.1:9", "--out_dir", str(out),
                        "--retries", "1"],
                       capture_output=True, text=True, timeout=60)
    last = r.stderr.strip().splitlines()[-1]  # (above it: the progress bar and the retry note)
    assert r.returncode == 1 and last.startswith("error: cannot fetch") and "retry: python" in last
    assert "(gave up after 2 attempts)" in last and "Traceback" not in r.stderr
    assert load_meta(out)["documents"]["val"] == 2  # the failed run kept the earlier output


def test_hub_download_resumes_after_a_dropped_connection_and_server_errors(fake_hub, tmp_path,
                                                                         monkeypatch, capsys):
    waits = []
    monkeypatch.setattr(hub.time, "sleep", waits.append)
    info = hub.hf_list_files(fake_hub, "allenai/c4", "en/c4-train.*.json.gz")[0]
    data = FakeHub.files["allenai/c4"][info["path"]]
    FakeHub.faults = [("cdn", "drop"), ("cdn", 503), ("cdn", "drop")]
    dest = hub.hf_download(fake_hub, "allenai/c4", info, tmp_path)
    assert dest.read_bytes() == data and not dest.with_name(dest.name + ".part").exists()
    half = len(data) // 2
    three_quarters = half + (len(data) - half) // 2
    assert FakeHub.ranges == [None, f"bytes={half}-", f"bytes={half}-", f"bytes={three_quarters}-"]
    assert waits == [1, 2, 4]                                  # backoff between the four tries
    assert capsys.readouterr().err.count("note: fetching allenai/c4/en/c4-train") == 3


def test_hub_listing_retries_and_honours_retry_after(fake_hub, monkeypatch):
    waits = []
    monkeypatch.setattr(hub.time, "sleep", waits.append)
    FakeHub.faults = [("api", 503), ("api", 429), ("api", "drop")]
    files = hub.hf_list_files(fake_hub, "allenai/c4", "en/c4-train.*.json.gz")
    assert len(files) == 2 and waits == [1, 3, 4]       # 429: the server's Retry-After


def test_hub_gives_up_in_one_line(fake_hub, tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(hub.time, "sleep", waits.append)
    info = hub.hf_list_files(fake_hub, "allenai/c4", "en/c4-train.*.json.gz")[0]
    FakeHub.faults = [("cdn", "drop")] * 3
    with pytest.raises(UserError, match=r"cannot fetch allenai/c4/en/c4-train.* \(gave up after 3 "
                                        r"attempts\)$") as e:
        hub.hf_download(fake_hub, "allenai/c4", info, tmp_path, retries=2)
    assert "\n" not in str(e.value) and waits == [1, 2]
    part = tmp_path / "allenai__c4" / (info["path"] + ".part")
    assert 0 < part.stat().st_size < info["lfs"]["size"]       # kept: the next run resumes it
    FakeHub.faults = [("cdn", 404)]                             # not transient: no retry
    with pytest.raises(UserError, match="HTTP 404"):
        hub.hf_download(fake_hub, "allenai/c4", info, tmp_path)
    assert waits == [1, 2]
    assert hub.hf_download(fake_hub, "allenai/c4", info, tmp_path).read_bytes() == \
        FakeHub.files["allenai/c4"][info["path"]]


def test_parquet_reader(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": ["a", "b", "c"], "url": ["u"] * 3}), tmp_path / "x.parquet")
    assert list(hub.iter_texts(tmp_path / "x.parquet", "text")) == ["a", "b", "c"]


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UserError, match="needs pyarrow: pip install pyarrow"):
        list(hub.iter_texts(tmp_path / "x.parquet", "text"))
