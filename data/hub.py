"""The full-scale corpora from the Hugging Face Hub (--source hf of data/<domain>/prepare.py),
fetched with urllib: no huggingface_hub or `datasets` package; parquet shards need pyarrow.

hf_list_files() lists a dataset's files through the Hub's tree API; hf_download() fetches one,
resuming an interrupted download and checking it against the hash in the listing; prepare_hf()
streams the shards through the GPT-2 tokenizer into the same train.bin/val.bin/meta.json that
the embedded corpora get (data/build.py's writers). Every request is retried after a transient
failure (_with_retries). data/cli.py's prepare_main() calls prepare_hf().
"""
import fnmatch
import gzip
import hashlib
import http.client
import json
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from data.build import TokenWriter, encode_documents, write_dataset
from data.common import sha256_file
from util import UserError, progress_bar


class _DropAuthOnRedirect(urllib.request.HTTPRedirectHandler):
    # resolve/ redirects to a CDN with a signed URL; sending the Hub token there can be refused.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        host = urllib.parse.urlsplit(req.full_url).netloc
        if new is not None and urllib.parse.urlsplit(newurl).netloc != host:
            new.remove_header("Authorization")
        return new


def _open(url, token=None, headers=None, timeout=60):
    h = {"User-Agent": "nca-ppt-data/1.0", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    opener = urllib.request.build_opener(_DropAuthOnRedirect)
    return opener.open(urllib.request.Request(url, headers=h), timeout=timeout)


RETRIES = 4  # further attempts of a Hub request after a transient failure
RETRY_STATUS = (429, 500, 502, 503, 504)


def _transient(e):
    """A failure worth retrying: a dropped or refused connection, a timeout, a truncated body,
    429 (rate limit) or a 5xx. A 404 or 401 will not change on a second try."""
    if isinstance(e, urllib.error.HTTPError):
        return e.code in RETRY_STATUS
    return isinstance(e, (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                          TimeoutError, ssl.SSLError, json.JSONDecodeError))


def _reason(e):
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    return str(getattr(e, "reason", None) or e or type(e).__name__).splitlines()[0]


def _with_retries(what, attempt, retries):
    """attempt() until it succeeds, waiting 1, 2, 4, ... s (at most 30 s, or the server's
    Retry-After) between tries of a transient failure; then one UserError line."""
    for i in range(retries + 1):
        try:
            return attempt()
        except Exception as e:
            if not _transient(e):
                if isinstance(e, (urllib.error.URLError, http.client.HTTPException)):
                    raise UserError(f"cannot fetch {what}: {_reason(e)}") from None
                raise
            if i == retries:
                raise UserError(f"cannot fetch {what}: {_reason(e)} "
                                f"(gave up after {retries + 1} attempts)") from None
            wait = min(30, 2 ** i)
            after = getattr(e, "headers", None) and e.headers.get("Retry-After")
            if after and after.isdigit():
                wait = min(60, int(after))
            print(f"note: fetching {what}: {_reason(e)}; retry {i + 1} of {retries} in {wait}s",
                  file=sys.stderr)
            time.sleep(wait)


def hf_list_files(endpoint, repo_id, pattern, revision="main", token=None, retries=RETRIES):
    """Files of a Hub dataset whose path matches the glob `pattern`, via the tree API
    (paginated by the Link header). Each is a dict with path, size and lfs.oid (sha256)."""
    top = pattern.split("*")[0].rpartition("/")[0]  # list only the folder the pattern lives in
    url = (f"{endpoint.rstrip('/')}/api/datasets/{repo_id}/tree/"
           f"{urllib.parse.quote(revision, safe='')}"
           + (f"/{urllib.parse.quote(top)}" if top else "") + "?recursive=true")
    files = []

    def page():
        with _open(url, token) as r:
            return json.load(r), r.headers.get("Link", "")
    while url:
        entries, link = _with_retries(url, page, retries)
        files += [f for f in entries
                  if f.get("type") == "file" and fnmatch.fnmatch(f["path"], pattern)]
        nxt = re.search(r'<([^>]+)>;\s*rel="next"', link)
        url = urllib.parse.urljoin(url, nxt.group(1)) if nxt else None
    if not files:
        raise UserError(f"no files matching {pattern} in {repo_id}@{revision} at {endpoint} "
                        "(check --revision)")
    return sorted(files, key=lambda f: f["path"])


def _verify(path, info):
    if "lfs" in info:
        return sha256_file(path) == info["lfs"]["oid"]
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)  # plain git file: oid is the blob sha1
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() == info.get("oid")


def hf_download(endpoint, repo_id, info, raw_dir, revision="main", token=None, retries=RETRIES):
    """Download one listed file into raw_dir and verify its sha256 against the listing. Bytes
    arrive in a .part file; a dropped connection or server error is retried with backoff,
    resuming with HTTP Range from what the .part file holds. A verified earlier download is
    reused."""
    dest = Path(raw_dir) / repo_id.replace("/", "__") / info["path"]
    size = info.get("lfs", {}).get("size", info.get("size"))
    if dest.exists() and dest.stat().st_size == size and _verify(dest, info):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    url = (f"{endpoint.rstrip('/')}/datasets/{repo_id}/resolve/"
           f"{urllib.parse.quote(revision, safe='')}/{urllib.parse.quote(info['path'])}")

    def attempt():
        have = part.stat().st_size if part.exists() else 0
        if have >= size:
            part.unlink(missing_ok=True)
            have = 0
        with _open(url, token, {"Range": f"bytes={have}-"} if have else None) as r:
            if r.status != 206:
                have = 0  # server ignored the Range header: start over
            with open(part, "ab" if have else "wb") as f, \
                    progress_bar(size, info["path"], unit="B", initial=have, unit_scale=True,
                                 leave=False) as bar:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
        got = part.stat().st_size
        if got < size:  # the connection closed early without an error (http.client allows it)
            raise http.client.IncompleteRead(b"", size - got)
    _with_retries(f"{repo_id}/{info['path']}", attempt, retries)
    if not _verify(part, info):
        part.unlink()
        raise UserError(f"{repo_id}/{info['path']} failed its sha256 check (partial file deleted)")
    os.replace(part, dest)
    return dest


def iter_texts(path, column):
    """The `column` field of every record of a .json(l)[.gz] or .parquet file."""
    name = str(path)
    if name.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"reading {Path(path).name} needs pyarrow: "
                            "pip install pyarrow") from None
        for batch in pq.ParquetFile(path).iter_batches(columns=[column], batch_size=1024):
            yield from batch.column(0).to_pylist()
        return
    with (gzip.open if name.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)[column]


def _encode_batch(texts):
    return encode_documents(texts, num_threads=1), len(texts)


def _batches(texts, size):
    batch = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _shard_jobs(path, hf, target, shard, seed, val_fraction, batch_docs):
    """The (split, texts) jobs of one downloaded shard, a list per batch of documents: all to
    `target`, or (target None) each document to val with probability val_fraction, from a
    generator seeded by (seed, shard index); the very first document of shard 0 always goes to
    val, so val is never empty."""
    rng = np.random.default_rng([seed, shard])
    for i, batch in enumerate(_batches(iter_texts(path, hf["column"]), batch_docs)):
        if target:
            yield [(target, batch)]
            continue
        to_val = rng.random(len(batch)) < val_fraction
        to_val[0] |= shard == 0 and i == 0
        yield [("train", [t for t, v in zip(batch, to_val) if not v]),
               ("val", [t for t, v in zip(batch, to_val) if v])]


def _discard(writers):
    for w in writers.values():
        w.discard()


def prepare_hf(out_dir, hf, endpoint, revision, token, val_fraction, seed, max_tokens=None,
               max_val_tokens=None, num_proc=1, batch_docs=256, meta=None, retries=RETRIES):
    """Stream Hub shards -> tokens -> train.bin/val.bin/meta.json under out_dir (shards in
    out_dir/raw/). `hf` = {"train": (repo, glob), "val": (repo, glob) or None, "column": name,
    "licence": str}. Without a val source, documents are split as _shard_jobs() says. (Same
    fraction and seed as nanoGPT for OWT, but not its exact documents: that needs `datasets`.)"""
    out_dir = Path(out_dir)
    limit = {"train": max_tokens, "val": max_val_tokens}
    writers = {s: TokenWriter(out_dir / f"{s}.bin") for s in ("train", "val")}

    def full(s):
        return limit[s] is not None and writers[s].tokens >= limit[s]

    def flush(jobs):
        """Tokenize (split, texts) jobs in order, a few batches at a time (bounded memory)."""
        jobs = [(s, t) for s, t in jobs if t and not full(s)]
        encoded = (pool.map if pool else map)(_encode_batch, [t for _, t in jobs])
        for (s, _), (tokens, n_docs) in zip(jobs, encoded):
            if not full(s):
                writers[s].write(tokens, n_docs)
                bar.update(len(tokens))

    sources = ([("val", hf["val"]), ("train", hf["train"])] if hf.get("val")
               else [(None, hf["train"])])
    used = []
    pool = Pool(num_proc) if num_proc > 1 else None
    bar = progress_bar(None, "tokenizing", unit="tok", unit_scale=True)  # no total known ahead
    try:
        for target, (repo, pattern) in sources:
            files = hf_list_files(endpoint, repo, pattern, revision, token, retries)
            for shard, info in enumerate(files):
                if full(target or "train"):
                    break
                path = hf_download(endpoint, repo, info, out_dir / "raw", revision, token, retries)
                used.append({"repo": repo, "path": info["path"],
                             "sha256": info.get("lfs", {}).get("oid")})
                jobs = []
                for batch_jobs in _shard_jobs(path, hf, target, shard, seed, val_fraction,
                                              batch_docs):
                    jobs += batch_jobs
                    if len(jobs) >= 4 * num_proc:
                        flush(jobs)
                        jobs = []
                        if full(target or "train"):
                            break
                flush(jobs)
    except BaseException:
        _discard(writers)
        raise
    finally:
        bar.close()
        if pool:
            pool.terminate()
    if writers["val"].tokens == 0 or writers["train"].tokens == 0:
        _discard(writers)
        raise UserError("the Hub files gave an empty train or val split")
    return write_dataset(out_dir, writers, {
        **(meta or {}), "source": "hf", "licence": hf["licence"], "endpoint": endpoint,
        "revision": revision, "files": used,
        "val_fraction": None if hf.get("val") else val_fraction, "seed": seed})
