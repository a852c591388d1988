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

from experiments.errors import ConfigError, DataError, ResumeError
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
    try:  # the rename made durable, like the checkpoint's own replace
        fd = os.open(Path(path).parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


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


def train(cfg: dict, prepared, path: str | Path, attrs: dict[str, Any], progress: bool = True,
          checkpoint: str | Path | None = None, every: int = 0, resume: str | Path | None = None) -> dict:
    """Train `cfg` (resolved, device fixed) on `prepared` data, recording into `path`.

    Returns a summary: final_loss, tokens (rows recorded), steps_recorded, seconds (the loop's wall time),
    best_step_seconds (the fastest 10-step window per step; CPU timing, the loop does not sync a GPU).

    With `checkpoint` and `every` > 0, every `every` steps (a multiple of the scalar flush) the recording is
    made durable and the training state (model, optimizer, master weights, random generators, data position)
    saved to `checkpoint`. `resume` names such a checkpoint of an interrupted run: its recording is renamed to
    `path` (the checkpoint re-pointed first) and continued in place after the checkpoint's step (the rows up
    to it are never rewritten; the digests continue from the checkpoint's), recording exactly what an
    uninterrupted run would.

    The file at `path` is complete (attr complete=1, fsynced) when this returns; on any exception it may be
    half-written and the caller removes it.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from experiments.rig.model import GPT

    t_cfg, o_cfg, prec = cfg["train"], cfg["optim"], cfg["precision"]["dtype"]
    device = torch.device(t_cfg["device"])
    V, S = prepared.vocab_size, t_cfg["steps"]
    tokens, steps = plan(cfg, prepared.dead)
    wanted = cfg["record"]["tensors"]

    # the recording first: a resumed one continues its digests from the checkpoint (or rebuilds them on the
    # writer thread while torch is set up)
    bits = "float32" if prec == "fp32" else "bfloat16"  # W (and E, grad) as the model holds them
    state_dtype = "float32" if prec.startswith("fp32-master") or prec == "fp32" else "bfloat16"
    dtypes = {"W": bits, "E": bits, "m": state_dtype, "v": state_dtype, "grad": bits, "h_mean": "float32",
              "master": "float32"}
    state = None
    if resume is not None:  # the interrupted recording becomes ours and is continued in place
        state = _load(resume, attrs["key"], device)
        _take_over(resume, state, Path(path))
    rec = Recorder(path, attrs=attrs, tokens=tokens, steps=steps, steps_total=S, d_model=cfg["model"]["d_model"],
                   tensors={k: dtypes[k] for k in wanted}, dead=prepared.dead, counts=prepared.counts,
                   resume_at=None if state is None else int(state["step"]),
                   digests=None if state is None else state.get("digests"))
    with _aborted_on_error(rec), _torch_settings(t_cfg["threads"], t_cfg["device"]):
        model = GPT(V, cfg["model"])
        model.init_weights(torch.Generator().manual_seed(t_cfg["init_seed"]))
        master = None
        if prec == "fp32":
            model = model.to(device)
        else:
            if prec.startswith("fp32-master"):
                master = [p.detach().to(device, torch.float32).clone().requires_grad_(True)
                          for p in model.parameters()]
            model = model.to(device=device, dtype=torch.bfloat16)  # .to() rounds to nearest even
        if _dtype_name(model.W) != bits:  # the recording's layout was chosen before the model existed
            raise RuntimeError(f"{prec}: W is {model.W.dtype}, the recording expects {bits}")
        params = list(model.parameters())
        opt_params = master if master is not None else params
        impl = o_cfg["impl"]
        try:
            opt = torch.optim.AdamW(opt_params, lr=o_cfg["lr"], betas=tuple(o_cfg["betas"]), eps=o_cfg["eps"],
                                    weight_decay=o_cfg["weight_decay"], foreach=impl == "foreach",
                                    fused=impl == "fused")
        except RuntimeError as e:
            raise ConfigError(f"optim.impl: {impl} is not available here: {e}") from None
        w_index = next(i for i, p in enumerate(params) if p is model.W)
        opt_W = opt_params[w_index]
        sr_gen = None
        if prec == "fp32-master-sr":
            sr_gen = torch.Generator(device=device).manual_seed(cfg["precision"]["sr_seed"])

        rows_t = torch.from_numpy(tokens.astype(np.int64)).to(device)
        all_rows = len(tokens) == V

        def rows_of(t):
            return t.detach() if all_rows else t.detach().index_select(0, rows_t)

        batches = Batches(prepared.ids, cfg)
        first = 1
        if state is not None:
            first = _restore(state, resume, model, opt, master, sr_gen, batches) + 1
            state = None

        # write_step copies what it is given before returning, so live tensors are handed over as views
        def record_state(step: int) -> None:
            out = {}
            if "W" in wanted:
                out["W"] = _bits(rows_of(model.W))
            if "E" in wanted:
                out["E"] = _bits(rows_of(model.E))
            if "master" in wanted:
                out["master"] = _bits(rows_of(opt_W))
            state = opt.state.get(opt_W, {})
            for name, key in (("m", "exp_avg"), ("v", "exp_avg_sq")):
                if name in wanted:
                    s = state.get(key)
                    out[name] = (_bits(rows_of(s)) if s is not None else
                                 np.zeros((len(tokens), model.W.shape[1]),
                                          np.uint16 if state_dtype == "bfloat16" else np.float32))
            if step == 0:  # no forward yet: grad rows 0, h_mean NaN (later steps write them after backward)
                if "grad" in wanted:
                    out["grad"] = np.zeros((len(tokens), model.W.shape[1]),
                                           np.uint16 if dtypes["grad"] == "bfloat16" else np.float32)
                if "h_mean" in wanted:
                    out["h_mean"] = np.full(model.W.shape[1], np.nan, np.float32)
            rec.write_step(step, out)

        if rec.wants(0) and first == 1:
            record_state(0)
        buf_loss, buf_lr, buf_clip, buf_start = [], [], [], first
        bar = tqdm(total=S, initial=first - 1, desc=cfg["name"], unit="step", disable=not progress,
                   mininterval=0.5)
        started = time.perf_counter()
        # fastest 10-step window: the loop's speed on a shared machine, where totals include other load
        stamps, best_step = collections.deque([started], maxlen=11), float("inf")
        for step in range(first, S + 1):
            x = batches.next().to(device, non_blocking=True)
            logits, h = model(x[:, :-1], return_hidden=True)
            loss = F.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))
            loss.backward()
            recording = rec.wants(step)
            if recording and ("grad" in wanted or "h_mean" in wanted):
                # written now: clipping scales the gradient in place before the step's other tensors
                early = {}
                if "grad" in wanted:
                    early["grad"] = _bits(rows_of(model.W.grad))
                if "h_mean" in wanted:
                    early["h_mean"] = h.detach().float().mean(dim=(0, 1)).cpu().numpy()
                rec.write_step(step, early)
            if master is not None:
                for mp, p in zip(master, params, strict=True):
                    mp.grad = p.grad.to(torch.float32)
                    p.grad = None
            grads = [p.grad for p in opt_params if p.grad is not None]
            if o_cfg["clip"] is not None:
                # exactly torch.nn.utils.clip_grad_norm_'s arithmetic, keeping the applied scale
                total = torch.nn.utils.get_total_norm(grads, 2.0, foreach=False)
                scale = torch.clamp(o_cfg["clip"] / (total + 1e-6), max=1.0)
                for g in grads:
                    g.mul_(scale.to(g.device))
                buf_clip.append(scale.detach().float())
            else:
                buf_clip.append(torch.ones((), device=device))
            lr = lr_at(o_cfg, step, S)
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
            buf_loss.append(loss.detach().float())
            buf_lr.append(lr)
            if recording:
                record_state(step)
            stamps.append(time.perf_counter())
            if len(stamps) == stamps.maxlen:
                best_step = min(best_step, (stamps[-1] - stamps[0]) / (len(stamps) - 1))
            if len(buf_loss) >= _FLUSH_EVERY or step == S:
                losses = torch.stack(buf_loss).cpu().numpy()
                rec.write_scalars(buf_start, losses, np.asarray(buf_lr, np.float64),
                                  torch.stack(buf_clip).cpu().numpy())
                bar.update(len(buf_loss))
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                buf_loss, buf_lr, buf_clip, buf_start = [], [], [], step + 1
                if not np.isfinite(losses).all():
                    raise DataError(f"{cfg['name']}: loss became {losses[-1]} at step {step}; "
                                    f"try a lower optim.lr")
                if checkpoint is not None and every and step % every == 0 and step < S:
                    rec.checkpoint()
                    _save(checkpoint, step, attrs["key"], path, model, opt, master, sr_gen, batches,
                          rec.digest_state())
        bar.close()
        seconds = time.perf_counter() - started
        final_loss = float(losses[-1])
        rec.finish({"final_loss": final_loss})
    return {"final_loss": final_loss, "tokens": len(tokens), "steps_recorded": len(steps), "seconds": seconds,
            "best_step_seconds": best_step if best_step < float("inf") else seconds / S}
