"""Where training batches come from: the stage-1 (pre-pre-training) sources, and the random
windows of a prepared text folder that stage 2 reads (docs/method.md, 'Pipeline').

A stage-1 source is a class registered in SOURCES under its --ppt_source name, so adding one is
one class and one line. Built from the parsed flags (its constructor checks them), it offers:
  vocab_size, kind     the tokens it emits and their name (the checkpoint's vocab.kind)
  check(world)         refusals that need the number of processes, before anything is written
  batches(micro, device, rank, world) -> (endless training iterator with state_dict /
                       load_state_dict, fixed list of validation batches)
  info                 what a checkpoint records about the data (the "nca" entry), or None
  scores()             a per-batch callback for model.evaluate adding metrics to validation,
                       with .result(), or None
"""
from dataclasses import asdict

import numpy as np
import torch

import dyck
import nca
from data.common import check_corpus, eval_windows, load_meta, load_tokens
from model import PPT_VOCAB
from util import UserError


class TextBatches:
    """Random windows of a prepared token file (nanoGPT get_batch). The window starts of batch i
    are drawn from a generator seeded by (seed, rank, i), so the position i is the whole state."""

    def __init__(self, data_dir, split, seq_len, batch_size, device, seed=0, rank=0):
        self.data_dir, self.split, self.T, self.B = data_dir, split, seq_len, batch_size
        self.device, self.seed, self.rank, self.count = device, seed, rank, 0

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, d):
        self.count = d["count"]

    def __iter__(self):
        return self

    def __next__(self):
        data = load_tokens(self.data_dir, self.split)       # a fresh memmap each batch (nanoGPT)
        rng = np.random.default_rng([self.seed, self.rank, self.count])
        ix = rng.integers(0, len(data) - self.T - 1, self.B)
        w = torch.from_numpy(np.stack([data[i:i + self.T + 1] for i in ix]).astype(np.int64))
        self.count += 1
        if str(self.device).startswith("cuda"):
            w = w.pin_memory().to(self.device, non_blocking=True)
        else:
            w = w.to(self.device)
        return w[:, :-1], w[:, 1:]


def text_val_batches(data_dir, seq_len, eval_tokens, batch_size, device):
    """The fixed validation windows eval.py scores (data.common.eval_windows), as batches."""
    w = torch.from_numpy(eval_windows(load_tokens(data_dir, "val"), seq_len, eval_tokens))
    w = w.to(device)
    return list(zip(w[:, :-1].split(batch_size), w[:, 1:].split(batch_size)))


class NCASource:
    """Trajectories of random NCA rules (nca.py): a bank of rules inside the complexity band,
    filtered once and cached; held-out rules for validation."""
    kind = "nca"

    def __init__(self, args):
        self.args = args
        self.cfg = nca.config_from_args(args, seq_len=args.seq_len,
                                        max_vocab=args.ppt_vocab_size or PPT_VOCAB)
        self.band = nca.band_from_args(args)
        self.vocab_size = self.cfg.vocab_size
        self.info = None

    def check(self, world):
        a = self.args
        if a.train_num_rules < a.ppt_micro_batch * world:
            raise UserError(f"--train_num_rules {a.train_num_rules} is fewer than one "
                             f"micro-batch ({a.ppt_micro_batch} x {world} processes)")

    def batches(self, micro, device, rank, world):
        a, n_train = self.args, self.args.train_num_rules
        # Rank 0 filters and caches the bank while the other ranks wait; then they read the cache
        # (or fail as rank 0 did: it reaches the barrier either way).
        try:
            if world > 1 and rank > 0:
                torch.distributed.barrier()
            bank = nca.filter_rules(self.cfg, self.band, n_train + a.val_num_rules,
                                    seed=a.rule_seed, device=device, progress=rank == 0)
        finally:
            if world > 1 and rank == 0:
                torch.distributed.barrier()
        train_bank = nca.RuleBank(bank.seeds[:n_train], bank.scores[:n_train], bank.band)
        val_seeds = bank.seeds[n_train:]
        self.info = {"config": asdict(self.cfg), "val_seeds": [int(s) for s in val_seeds],
                     "mask_delimiters": a.mask_delimiters}
        train = nca.NCABatches(self.cfg, train_bank, micro, device, seed=a.seed,
                               mode=a.nca_epoch_mode, mask_delimiters=a.mask_delimiters,
                               rank=rank, world_size=world)
        val = nca.val_batches(self.cfg, val_seeds, a.ppt_val_seqs, micro, device,
                              mask_delimiters=a.mask_delimiters)
        return train, val

    def scores(self):
        return GridAccuracy(self.cfg)


class DyckSource:
    """k-Dyck bracket strings (dyck.py), generated on the fly; validation from its own stream."""
    kind = "dyck"
    info = None

    def __init__(self, args):
        self.args = args
        self.cfg = dyck.config_from_args(args, seq_len=args.seq_len,
                                         max_vocab=args.ppt_vocab_size or PPT_VOCAB)
        self.vocab_size = self.cfg.vocab_size

    def check(self, world):
        pass

    def batches(self, micro, device, rank, world):
        a = self.args
        return (dyck.DyckBatches(self.cfg, micro, device, seed=a.seed, rank=rank, world_size=world),
                dyck.val_batches(self.cfg, a.ppt_val_seqs, micro, device, seed=a.seed))

    def scores(self):
        return None


class TextSource:
    """Natural text from a prepared folder (--ppt_data, e.g. C4): the text baseline."""
    info = None

    def __init__(self, args):
        self.args = args
        meta = load_meta(args.ppt_data)
        self.vocab_size, self.kind = meta["vocab_size"], meta.get("tokenizer", "gpt2")

    def check(self, world):
        a = self.args
        check_corpus(a.ppt_data, a.seq_len, a.ppt_vocab_size or self.vocab_size, "--ppt_vocab_size")

    def batches(self, micro, device, rank, world):
        a = self.args
        return (TextBatches(a.ppt_data, "train", a.seq_len, micro, device, a.seed, rank),
                text_val_batches(a.ppt_data, a.seq_len, a.ppt_val_seqs * a.seq_len, micro, device))

    def scores(self):
        return None


SOURCES = {"nca": NCASource, "dyck": DyckSource, "text": TextSource}


class GridAccuracy:
    """NCA in-context accuracy by grid position, accumulated over validation batches (a callback
    for model.evaluate): the model's (nca.grid_accuracy) beside the 'each grid is a copy of the
    previous one' predictor's (nca.copy_accuracy), which rule learning must beat."""
    keys = ("token_acc", "grid_acc", "copy_token_acc", "copy_grid_acc")

    def __init__(self, cfg):
        self.cfg, self.seqs = cfg, 0
        self.sums = {k: torch.zeros(len(nca.grid_positions(cfg)), dtype=torch.float64)
                     for k in self.keys}

    def __call__(self, x, y, nll, pred):
        accs = nca.grid_accuracy(pred, y, self.cfg) + nca.copy_accuracy(x, y, self.cfg)
        for k, v in zip(self.keys, accs):
            self.sums[k] += v.double().cpu()
        self.seqs += len(x)

    def by_grid(self):
        """Per grid position g = 1..G (grid g is predicted with g grids in context)."""
        return {k: (v / self.seqs).tolist() for k, v in self.sums.items()}

    def result(self):
        """Means over grid positions, for the validation line."""
        return {k: float(v.mean()) / self.seqs for k, v in self.sums.items()}
