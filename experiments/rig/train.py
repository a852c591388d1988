"""The training loop: minimal, explicit, deterministic, and recording what an AdamW replay needs.

Per step t = 1..S:  forward -> backward -> record grad[t] (unclipped) -> clip (scale recorded, 1.0 when
none) -> set lr(t) -> optimizer step -> (master variants: write fp32 master into the bf16 model) ->
record W[t], m[t], v[t].  So m[t], v[t] are the states that produced W[t]. Step 0 records the initialization.

Determinism: the init draws from its own torch.Generator(init_seed) and the data order from another
(data_seed), so "same init, different data order" is one config change; deterministic algorithms are on and
the CPU thread count is fixed by `train.threads` (CPU results differ between thread counts). Global torch
settings are restored afterwards because pages train in their own kernel. AdamW's implementation is pinned
(`optim.impl`) and recorded in `versions`, since the replay must match its exact arithmetic.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import paths
from experiments.errors import ConfigError, DataError, ResumeError
from experiments.rig.config import MASTER_PRECISIONS
from experiments.rig.record import Recorder

_FLUSH_EVERY = 50  # steps of loss/lr/clip buffered before a write (keeps per-step device syncs away)


def plan(cfg: dict, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which token rows and which steps the config records: (tokens int32 sorted, steps int32 sorted)."""
    V, S = len(dead), cfg["train"]["steps"]
    rows = cfg["record"]["rows"]
    if rows == "all":
        tokens = np.arange(V)
    elif rows == "dead":
        tokens = np.nonzero(dead)[0]
    elif rows == "live":
        tokens = np.nonzero(~dead)[0]
    else:
        tokens = np.asarray(rows)
        if tokens.max() >= V:
            raise ConfigError(f"record.rows: token id {int(tokens.max())} is outside the vocabulary (size {V})")
    steps = cfg["record"]["steps"]
    if steps == "all":
        steps = np.arange(S + 1)
    elif isinstance(steps, dict):
        steps = np.arange(0, S + 1, steps["every"])
    return np.asarray(tokens, dtype=np.int32), np.asarray(steps, dtype=np.int32)


def versions(cfg: dict) -> dict[str, Any]:
    import h5py
    import torch

    return {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "h5py": h5py.__version__, "optimizer": f"torch.optim.AdamW(impl={cfg['optim']['impl']})",
            "optimizer_impl": cfg["optim"]["impl"], "device": cfg["train"]["device"],
            "threads": cfg["train"]["threads"], "machine": platform.machine()}


@contextlib.contextmanager
def _aborted_on_error(rec: Recorder):
    try:
        yield rec
    except BaseException:
        rec.abort()
        raise


@contextlib.contextmanager
def _torch_settings(threads: int, device: str):
    import torch

    if device.startswith("cuda"):  # cuBLAS needs this for deterministic algorithms
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch.utils.deterministic

    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    # deterministic mode also fills every new tensor with NaN (a debugging aid, 15-20 % of a CPU step); no
    # kernel here reads memory it did not write, so the bits do not depend on it
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill


class Batches:
    """Windows of seq_len tokens in an order fixed by data_seed; a fresh permutation every epoch.

    sliding: every start offset (len(ids) - seq_len windows, as the Flannel/Thimble 1-7 datasets).
    chunks: non-overlapping windows, shuffled each epoch, last partial batch dropped (Thimble 8+/Crucible).
    """

    def __init__(self, ids: np.ndarray, cfg: dict):
        import torch

        t = cfg["train"]
        self.L, self.B = t["seq_len"], t["batch_size"]
        self.ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        self.sliding = t["dataset"] == "sliding"
        n = len(ids) - self.L if self.sliding else len(ids) // self.L
        self.n_windows = max(0, n)
        self.per_epoch = self.n_windows // self.B
        if self.per_epoch == 0:
            raise DataError(f"the corpus has {len(ids)} tokens: too few for one batch of {self.B} x {self.L} "
                            f"({t['dataset']} windows); raise corpus.train_bytes or lower train.batch_size")
        self.gen = torch.Generator().manual_seed(t["data_seed"])
        self.offsets = torch.arange(self.L)
        self._perm, self._pos = None, 0

    def next(self):
        import torch

        if self._perm is None or self._pos + self.B > self.per_epoch * self.B:
            self._perm, self._pos = torch.randperm(self.n_windows, generator=self.gen), 0
        starts = self._perm[self._pos: self._pos + self.B]
        self._pos += self.B
        if not self.sliding:
            starts = starts * self.L
        return self.ids[starts[:, None] + self.offsets]


def _bits(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.float().numpy()


def _dtype_name(t) -> str:
    import torch

    return "bfloat16" if t.dtype == torch.bfloat16 else "float32"


def _stochastic_round_(dst, src, gen) -> None:
    """dst (bf16) <- src (fp32) rounded up or down with probability by distance: add 16 random low bits, cut."""
    import torch

    noise = torch.randint(0, 1 << 16, src.shape, generator=gen, device=src.device, dtype=torch.int32)
    bits = (src.view(torch.int32) + noise) & ~0xFFFF
    dst.copy_(bits.view(torch.float32))  # exact: the low 16 bits are zero


def _write_checkpoint(checkpoint, state: dict) -> None:
    import torch

    tmp = Path(f"{checkpoint}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, checkpoint)


def _save(checkpoint, step: int, key: str, partial, model, opt, master, sr_gen, batches, digests) -> None:
    """The training state after `step`, written atomically next to the recording it belongs to (with the
    recording's running digests, so a resume need not read the rows back)."""
    _write_checkpoint(checkpoint, {
        "step": step, "key": key, "partial": str(partial), "digests": digests,
        "model": model.state_dict(), "opt": opt.state_dict(),
        "master": None if master is None else [m.detach() for m in master],
        "sr_gen": None if sr_gen is None else sr_gen.get_state(),
        "data": {"gen": batches.gen.get_state(), "perm": batches._perm, "pos": batches._pos}})


def _load(checkpoint, key: str, device) -> dict:
    import torch

    try:
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        owner, _ = state["key"], int(state["step"])
    except Exception as e:  # torn, foreign or of an older layout
        raise ResumeError(f"{checkpoint}: not a usable checkpoint: {e!r}") from None
    if owner != key:
        raise ResumeError(f"{checkpoint}: a checkpoint of run {owner}, not {key}")
    return state


def _take_over(checkpoint, state: dict, path: Path) -> None:
    """Make the interrupted recording of `state` this process's recording `path`, in place, so that a kill at
    any moment leaves a checkpoint naming an existing recording: the checkpoint names `path` (and the old name
    as `previous`) first, then the file is renamed."""
    # `previous`: a take-over killed between re-pointing the checkpoint and the rename
    partial = next((n for n in (state.get("partial"), state.get("previous")) if n and Path(n).exists()), None)
    if partial is None:
        raise ResumeError(f"{checkpoint}: its recording {state.get('partial')} is gone")
    if Path(partial) == Path(path):
        return
    state["partial"], state["previous"] = str(path), partial
    _write_checkpoint(checkpoint, state)
    os.replace(partial, path)
    paths.fsync_dir(Path(path).parent)  # the rename made durable, like the checkpoint's own replace


def _restore(state: dict, checkpoint, model, opt, master, sr_gen, batches) -> int:
    """Load a checkpoint's state into the freshly built training objects; its step."""
    import torch

    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        with torch.no_grad():
            for mp, saved in zip(master or [], state["master"] or [], strict=True):
                mp.copy_(saved)
        if sr_gen is not None:
            sr_gen.set_state(state["sr_gen"])
        batches.gen.set_state(state["data"]["gen"])
        batches._perm, batches._pos = state["data"]["perm"], state["data"]["pos"]
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # torn, foreign or older layout
        raise ResumeError(f"{checkpoint}: not a usable checkpoint: {e!r}") from None
    return int(state["step"])


def lr_at(o_cfg: dict, step: int, steps: int) -> float:
    """The learning rate of optimizer step `step` (1-based) of `steps`, as HF Trainer's schedulers give it
    (get_constant / get_linear / get_cosine_with_min_lr _schedule_with_warmup, evaluated at step − 1)."""
    lr, warmup, current = o_cfg["lr"], o_cfg.get("warmup", 0), step - 1
    if current < warmup:
        return lr * (float(current) / float(max(1, warmup)))
    if o_cfg["schedule"] == "constant":
        return lr
    if o_cfg["schedule"] == "linear":
        return lr * max(0.0, float(steps - current) / float(max(1, steps - warmup)))
    progress = float(current - warmup) / float(max(1, steps - warmup))
    floor = o_cfg.get("min_lr_ratio", 0.0)
    return lr * (max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress))) * (1 - floor) + floor)


def _layout(prec: str) -> dict[str, str]:
    """Each recordable tensor's stored dtype under precision `prec`: W, E and grad as the model holds them, m
    and v as the optimizer does (fp32 beside fp32 masters), h_mean and master always float32."""
    bits = "float32" if prec == "fp32" else "bfloat16"
    state = "float32" if prec in MASTER_PRECISIONS or prec == "fp32" else "bfloat16"
    return {"W": bits, "E": bits, "m": state, "v": state, "grad": bits, "h_mean": "float32", "master": "float32"}


def _open_recording(cfg: dict, prepared, path, attrs: dict, tokens, steps, resume,
                    device) -> tuple[Recorder, dict | None]:
    """The recording, and the checkpoint's state when resuming: the interrupted recording becomes `path` and
    continues its digests from the checkpoint (or rebuilds them on the writer thread while torch is set up)."""
    state = None
    if resume is not None:
        state = _load(resume, attrs["key"], device)
        _take_over(resume, state, Path(path))
    dtypes = _layout(cfg["precision"]["dtype"])
    rec = Recorder(path, attrs=attrs, tokens=tokens, steps=steps, steps_total=cfg["train"]["steps"],
                   d_model=cfg["model"]["d_model"], tensors={k: dtypes[k] for k in cfg["record"]["tensors"]},
                   dead=prepared.dead, counts=prepared.counts,
                   resume_at=None if state is None else int(state["step"]),
                   digests=None if state is None else state.get("digests"))
    return rec, state


def _build(cfg: dict, V: int, device) -> tuple[Any, list | None, Any, Any]:
    """(model, master, opt, sr_gen): the model drawn from init_seed (CPU, fp32) and cast to its precision (.to()
    rounds to nearest even); under fp32-master-* the fp32 master copies, which AdamW then updates instead of
    the model's parameters; under fp32-master-sr the stochastic-rounding generator (sr_seed)."""
    import torch

    from experiments.rig.model import GPT

    prec, o_cfg = cfg["precision"]["dtype"], cfg["optim"]
    model = GPT(V, cfg["model"])
    model.init_weights(torch.Generator().manual_seed(cfg["train"]["init_seed"]))
    master = None
    if prec == "fp32":
        model = model.to(device)
    else:
        if prec in MASTER_PRECISIONS:
            master = [p.detach().to(device, torch.float32).clone().requires_grad_(True)
                      for p in model.parameters()]
        model = model.to(device=device, dtype=torch.bfloat16)
    if _dtype_name(model.W) != _layout(prec)["W"]:  # the recording's layout was chosen before the model existed
        raise RuntimeError(f"{prec}: W is {model.W.dtype}, the recording expects {_layout(prec)['W']}")
    impl = o_cfg["impl"]
    try:
        opt = torch.optim.AdamW(master if master is not None else list(model.parameters()), lr=o_cfg["lr"],
                                betas=tuple(o_cfg["betas"]), eps=o_cfg["eps"], weight_decay=o_cfg["weight_decay"],
                                foreach=impl == "foreach", fused=impl == "fused")
    except RuntimeError as e:
        raise ConfigError(f"optim.impl: {impl} is not available here: {e}") from None
    sr_gen = None
    if prec == "fp32-master-sr":
        sr_gen = torch.Generator(device=device).manual_seed(cfg["precision"]["sr_seed"])
    return model, master, opt, sr_gen


class _Snapshots:
    """A step's recorded tensors, handed to `Recorder.write_step` as bit patterns of the recorded rows (live
    tensors as views: write_step copies them before it returns)."""

    def __init__(self, rec: Recorder, cfg: dict, tokens: np.ndarray, model, opt, master, device):
        import torch

        self.rec, self.wanted, self.model, self.opt = rec, cfg["record"]["tensors"], model, opt
        self.dtypes = _layout(cfg["precision"]["dtype"])
        params = list(model.parameters())
        w_index = next(i for i, p in enumerate(params) if p is model.W)
        self.opt_W = (master if master is not None else params)[w_index]  # what AdamW updates for W
        self.shape = (len(tokens), model.W.shape[1])
        self.rows_t = torch.from_numpy(tokens.astype(np.int64)).to(device)
        self.all_rows = len(tokens) == model.W.shape[0]

    def _rows(self, t) -> np.ndarray:
        return _bits(t.detach() if self.all_rows else t.detach().index_select(0, self.rows_t))

    def _zeros(self, name: str) -> np.ndarray:
        return np.zeros(self.shape, np.uint16 if self.dtypes[name] == "bfloat16" else np.float32)

    def gradient(self, step: int, h) -> None:
        """grad (W's rows, unclipped) and h_mean (the final hidden state's mean) of `step`, after backward."""
        out = {}
        if "grad" in self.wanted:
            out["grad"] = self._rows(self.model.W.grad)
        if "h_mean" in self.wanted:
            out["h_mean"] = h.detach().float().mean(dim=(0, 1)).cpu().numpy()
        if out:
            self.rec.write_step(step, out)

    def state(self, step: int) -> None:
        """W, E, master, m, v after `step` (m, v zero before the first update); at step 0, before any forward,
        also grad (zero rows) and h_mean (NaN)."""
        adam = self.opt.state.get(self.opt_W, {})
        live = {"W": self.model.W, "E": self.model.E, "master": self.opt_W, "m": adam.get("exp_avg"),
                "v": adam.get("exp_avg_sq")}
        out = {name: self._zeros(name) if t is None else self._rows(t)
               for name, t in live.items() if name in self.wanted}
        if step == 0:
            if "grad" in self.wanted:
                out["grad"] = self._zeros("grad")
            if "h_mean" in self.wanted:
                out["h_mean"] = np.full(self.shape[1], np.nan, np.float32)
        self.rec.write_step(step, out)


def _to_master(master: list, params: list) -> None:
    """Move the bf16 model's gradients onto the fp32 master copies (as fp32)."""
    import torch

    for mp, p in zip(master, params, strict=True):
        mp.grad = p.grad.to(torch.float32)
        p.grad = None


def _clip(params: list, clip: float | None, device):
    """Scale the gradients of `params` to total norm at most `clip` with exactly torch.nn.utils.clip_grad_norm_'s
    arithmetic; the applied scale as a 0-d float32 tensor (1.0 when `clip` is None)."""
    import torch

    if clip is None:
        return torch.ones((), device=device)
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0, foreach=False)
    scale = torch.clamp(clip / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.to(g.device))
    return scale.detach().float()


def _step(opt, lr: float, master: list | None, params: list, sr_gen) -> None:
    """One AdamW step at `lr`, gradients dropped; then the fp32 masters (if any) written into the bf16 model,
    rounded to nearest even or, with `sr_gen`, stochastically."""
    import torch

    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    opt.zero_grad(set_to_none=True)
    if master is not None:
        with torch.no_grad():
            for mp, p in zip(master, params, strict=True):
                if sr_gen is None:
                    p.copy_(mp)
                else:
                    _stochastic_round_(p, mp.detach(), sr_gen)


class _Scalars:
    """Loss, lr and clip scale per step, kept (on the device) until `flush` writes them and advances `bar`."""

    def __init__(self, rec: Recorder, bar, name: str, first: int):
        self.rec, self.bar, self.name = rec, bar, name
        self.loss, self.lr, self.clip, self.start = [], [], [], first

    def add(self, loss, lr: float, clip) -> None:
        self.loss.append(loss.detach().float())
        self.lr.append(lr)
        self.clip.append(clip)

    def due(self, step: int, last: int) -> bool:
        return len(self.loss) >= _FLUSH_EVERY or step == last

    def flush(self, step: int) -> float:
        """Write the buffered steps (through `step`); the last loss. A non-finite loss raises DataError."""
        import torch

        losses = torch.stack(self.loss).cpu().numpy()
        self.rec.write_scalars(self.start, losses, np.asarray(self.lr, np.float64),
                               torch.stack(self.clip).cpu().numpy())
        self.bar.update(len(self.loss))
        self.bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        self.loss, self.lr, self.clip, self.start = [], [], [], step + 1
        if not np.isfinite(losses).all():
            raise DataError(f"{self.name}: loss became {losses[-1]} at step {step}; try a lower optim.lr")
        return float(losses[-1])


class _Pace:
    """The loop's wall time and its fastest 10-step window per step: its speed on a shared machine, where
    totals include other load (CPU timing: the loop does not sync a GPU)."""

    def __init__(self):
        self.started = time.perf_counter()
        self.stamps, self.best = collections.deque([self.started], maxlen=11), float("inf")

    def tick(self) -> None:
        self.stamps.append(time.perf_counter())
        if len(self.stamps) == self.stamps.maxlen:
            self.best = min(self.best, (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1))

    def summary(self, steps: int) -> dict[str, float]:
        seconds = time.perf_counter() - self.started
        return {"seconds": seconds, "best_step_seconds": self.best if self.best < float("inf") else seconds / steps}


def train(cfg: dict, prepared, path: str | Path, attrs: dict[str, Any], progress: bool = True,
          checkpoint: str | Path | None = None, every: int = 0, resume: str | Path | None = None) -> dict:
    """Train `cfg` (resolved, device fixed) on `prepared` data, recording into `path`; returns final_loss,
    tokens (rows recorded), steps_recorded, seconds (the loop's wall time) and best_step_seconds (`_Pace`).

    With `checkpoint` and `every` > 0 (a multiple of the scalar flush), every `every` steps the recording is
    made durable and the training state (model, optimizer, masters, generators, data position) saved to
    `checkpoint`. `resume` names such a checkpoint of an interrupted run: its recording becomes `path` and is
    continued in place after the checkpoint's step (earlier rows never rewritten, digests continued from the
    checkpoint's), recording exactly what an uninterrupted run would.

    The file at `path` is complete (attr complete=1, fsynced) when this returns; on any exception it may be
    half-written and the caller removes it.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    t_cfg, o_cfg, S, V = cfg["train"], cfg["optim"], cfg["train"]["steps"], prepared.vocab_size
    device = torch.device(t_cfg["device"])
    tokens, steps = plan(cfg, prepared.dead)
    rec, state = _open_recording(cfg, prepared, path, attrs, tokens, steps, resume, device)
    with _aborted_on_error(rec), _torch_settings(t_cfg["threads"], t_cfg["device"]):
        model, master, opt, sr_gen = _build(cfg, V, device)
        params = list(model.parameters())
        snap = _Snapshots(rec, cfg, tokens, model, opt, master, device)
        batches = Batches(prepared.ids, cfg)
        first = 1 if state is None else _restore(state, resume, model, opt, master, sr_gen, batches) + 1
        state = None  # the checkpoint's tensors are not kept through the loop
        if rec.wants(0) and first == 1:
            snap.state(0)  # step 0: the initialization
        bar = tqdm(total=S, initial=first - 1, desc=cfg["name"], unit="step", disable=not progress,
                   mininterval=0.5)
        scalars, pace = _Scalars(rec, bar, cfg["name"], first), _Pace()
        for step in range(first, S + 1):
            # batch: the next batch_size windows of seq_len tokens, in data_seed's order
            x = batches.next().to(device, non_blocking=True)
            # forward and loss: next-token cross-entropy at every position
            logits, h = model(x[:, :-1], return_hidden=True)
            loss = F.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))
            # backward; grad and h_mean recorded now, before clipping scales the gradient in place
            loss.backward()
            recording = rec.wants(step)
            if recording:
                snap.gradient(step, h)
            # clip, on the fp32 masters' gradients where there are masters; the scale is recorded
            if master is not None:
                _to_master(master, params)
            clip = _clip(master if master is not None else params, o_cfg["clip"], device)
            # lr and optimizer step (fp32 masters then written into the bf16 model, RNE or stochastic)
            lr = lr_at(o_cfg, step, S)
            _step(opt, lr, master, params, sr_gen)
            scalars.add(loss, lr, clip)
            # record W, E, master, m, v: m[t], v[t] are the states that produced W[t]
            if recording:
                snap.state(step)
            pace.tick()
            # flush the scalars (every _FLUSH_EVERY steps and the last), then checkpoint on a multiple of `every`
            if scalars.due(step, S):
                final_loss = scalars.flush(step)
                if checkpoint is not None and every and step % every == 0 and step < S:
                    rec.checkpoint()
                    _save(checkpoint, step, attrs["key"], path, model, opt, master, sr_gen, batches,
                          rec.digest_state())
        bar.close()
        summary = pace.summary(S)
        rec.finish({"final_loss": final_loss})
    return {"final_loss": final_loss, "tokens": len(tokens), "steps_recorded": len(steps), **summary}
