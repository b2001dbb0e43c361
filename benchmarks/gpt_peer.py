"""The peer a user would otherwise pick: a small GPT trained on characters, in PyTorch.

Written for this project after the recipe nanoGPT publishes for training on characters on a
laptop CPU (4 layers, 4 heads, 128 wide, context 64, batch 12, AdamW at 1e-3 decaying to 1e-4
on a cosine after 100 warm-up steps, weight decay 0.1 on matrices, gradient clipping at 1.0,
no dropout, tied input and output embeddings, no biases). ``benchmarks/recipes.py`` races it
against the LSTM recipes at equal training time on the same text, split and metric: each
held-out character predicted from the 60 before it (the book's window metric), bits/char.

The cosine is fitted to the time budget as the LSTM's is: after ``FIT_AFTER_STEPS`` steps the
measured step time says how many steps the budget holds, and the decay ends there.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

FIT_AFTER_STEPS = 60
# The races validate the GPT after every this many seconds of its training (training clock or wall clock).
EVAL_EVERY_SECONDS = 50.0
# Held-out windows scored per validation during training (evenly spaced, the same every time; a
# window costs the GPT ~2 ms of CPU, so 4,096 keep a validation near 8 s):
# the held-best checkpoint is chosen on them, then scored on the whole tail at the end.
TRAINING_VAL_WINDOWS = 4096
EVAL_BATCH = 512


@dataclass(frozen=True)
class GPTRecipe:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    batch_size: int = 12
    dropout: float = 0.0
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.99  # nanoGPT's setting for small character data
    clip_norm: float = 1.0
    # bfloat16 autocast (torch.autocast on the CPU): linear layers and attention in bfloat16, the weights,
    # optimizer, layer norms and the loss in float32: PyTorch's own mixed precision, like --compute-dtype.
    autocast: bool = False


def build_gpt(recipe: GPTRecipe, vocab_size: int):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(recipe.n_embd, 3 * recipe.n_embd, bias=False)
            self.proj = nn.Linear(recipe.n_embd, recipe.n_embd, bias=False)
            self.drop = nn.Dropout(recipe.dropout)

        def forward(self, x):
            batch, time_, width = x.shape
            q, k, v = self.qkv(x).split(width, dim=2)
            heads = lambda t: t.view(batch, time_, recipe.n_head, width // recipe.n_head).transpose(1, 2)  # noqa: E731
            y = F.scaled_dot_product_attention(
                heads(q), heads(k), heads(v), is_causal=True, dropout_p=recipe.dropout if self.training else 0.0
            )
            return self.drop(self.proj(y.transpose(1, 2).reshape(batch, time_, width)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(recipe.n_embd, bias=False)
            self.attention = SelfAttention()
            self.norm2 = nn.LayerNorm(recipe.n_embd, bias=False)
            self.mlp = nn.Sequential(
                nn.Linear(recipe.n_embd, 4 * recipe.n_embd, bias=False),
                nn.GELU(),
                nn.Linear(4 * recipe.n_embd, recipe.n_embd, bias=False),
                nn.Dropout(recipe.dropout),
            )

        def forward(self, x):
            x = x + self.attention(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens = nn.Embedding(vocab_size, recipe.n_embd)
            self.positions = nn.Embedding(recipe.block_size, recipe.n_embd)
            self.drop = nn.Dropout(recipe.dropout)
            self.blocks = nn.ModuleList(Block() for _ in range(recipe.n_layer))
            self.norm = nn.LayerNorm(recipe.n_embd, bias=False)
            self.head = nn.Linear(recipe.n_embd, vocab_size, bias=False)
            self.head.weight = self.tokens.weight  # tied, as GPT-2
            self.apply(self._init)
            for name, parameter in self.named_parameters():
                if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                    nn.init.normal_(parameter, 0.0, 0.02 / math.sqrt(2 * recipe.n_layer))

        @staticmethod
        def _init(module):
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02)

        def forward(self, ids):  # (batch, time) -> (batch, time, vocab)
            positions = torch.arange(ids.shape[1], device=ids.device)
            x = self.drop(self.tokens(ids) + self.positions(positions))
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x))

    return GPT()


def cosine_rate(recipe: GPTRecipe, step: int, total_steps: int) -> float:
    """nanoGPT's schedule: linear warm-up, then a cosine from the peak to ``min_lr`` at ``total_steps``."""
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / (recipe.warmup_steps + 1)
    if step >= total_steps:
        return recipe.min_lr
    progress = (step - recipe.warmup_steps) / max(total_steps - recipe.warmup_steps, 1)
    return recipe.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (recipe.learning_rate - recipe.min_lr)


def window_bits(model, ids: np.ndarray, starts: np.ndarray, context: int, autocast: bool = False) -> float:
    """Mean bits/char of ``ids[s + context]`` given ``ids[s : s + context]``, over ``starts``; with ``autocast``
    in the bfloat16 the model trained in (as an LSTM of --compute-dtype bfloat16 is scored in its dtype)."""
    import torch
    from torch.nn import functional as F

    model.eval()
    total = 0.0
    offsets = np.arange(context + 1)
    with torch.no_grad():
        for begin in range(0, len(starts), EVAL_BATCH):
            windows = torch.from_numpy(ids[starts[begin : begin + EVAL_BATCH, None] + offsets].astype(np.int64))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = model(windows[:, :context])[:, -1]  # (batch, vocab): after the last context character
            total += F.cross_entropy(logits.float(), windows[:, context], reduction="sum").item()
    model.train()
    return total / len(starts) / math.log(2.0)


def timed_validation_cost(model, ids: np.ndarray, starts: np.ndarray, context: int, autocast: bool) -> float:
    """Seconds a validation over ``starts`` takes, timed on one batch of them."""
    some = starts[:EVAL_BATCH]
    began = time.perf_counter()
    window_bits(model, ids, some, context, autocast)
    return (time.perf_counter() - began) * len(starts) / len(some)


def train_gpt(
    recipe: GPTRecipe,
    ids: np.ndarray,
    val_start: int,
    vocab_size: int,
    *,
    seconds: float,
    eval_every_seconds: float,
    context: int = 60,
    seed: int = 0,
    threads: int | None = None,
    keep_model: bool = False,
    deadline: float | None = None,
) -> dict:
    """Train for ``seconds`` of training time (validation excluded); returns the run's curve and best.

    ``deadline``: a ``time.perf_counter()`` reading by which training and its validations are over (a
    wall-clock budget, as ``--time-limit`` is for the LSTM). The cosine is then fitted to what is left after
    the validations the run will make (their cost timed on a slice of them), and the last step leaves room for
    the last validation.

    ``keep_model``: the held-best model itself is returned too, under ``"model"`` (not JSON).

    ``ids`` is the encoded text; training windows lie before ``val_start`` (no target reaches the tail),
    validation scores every tail character from the ``context`` before it, as the LSTM's loop does.
    """
    import torch
    from torch.nn import functional as F

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_gpt(recipe, vocab_size)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": recipe.weight_decay}, {"params": others, "weight_decay": 0.0}],
        lr=recipe.learning_rate,
        betas=(0.9, recipe.beta2),
    )
    val_all = np.arange(val_start, len(ids) - context, dtype=np.int64)
    val_some = val_all[np.linspace(0, len(val_all) - 1, min(TRAINING_VAL_WINDOWS, len(val_all))).astype(np.int64)]
    highest_start = val_start - recipe.block_size - 1  # the last target stays before the tail
    offsets = np.arange(recipe.block_size + 1)
    total_steps = 10**9  # until the step time is measured
    points, best_state, best_bits = [], None, math.inf
    train_seconds, step, losses, next_eval = 0.0, 0, [], eval_every_seconds
    fit_clock, eval_cost, step_cost = None, 0.0, 0.0

    def at_deadline() -> bool:
        return deadline is not None and time.perf_counter() + step_cost + eval_cost >= deadline

    while train_seconds < seconds and not (deadline is not None and points and at_deadline()):
        started = time.perf_counter()
        rate = cosine_rate(recipe, step, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = rate
        windows = torch.from_numpy(
            ids[rng.integers(0, highest_start, recipe.batch_size)[:, None] + offsets].astype(np.int64)
        )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.autocast):
            logits = model(windows[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_norm)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        step_cost = time.perf_counter() - started
        train_seconds += step_cost
        if step == 10:
            fit_clock = train_seconds
        if step == 10 + FIT_AFTER_STEPS:
            step_seconds = (train_seconds - fit_clock) / FIT_AFTER_STEPS
            if deadline is None:
                total_steps = step + int(0.98 * (seconds - train_seconds) / step_seconds)
            else:
                eval_cost = timed_validation_cost(model, ids, val_some, context, recipe.autocast)
                left = deadline - time.perf_counter()
                evaluations = 1 + int(left / (eval_every_seconds + eval_cost))
                total_steps = step + int(0.98 * max(left - evaluations * eval_cost, 0.0) / step_seconds)
        if train_seconds >= next_eval or train_seconds >= seconds or at_deadline():
            evaluated = time.perf_counter()
            bits = window_bits(model, ids, val_some, context, recipe.autocast)
            eval_cost = time.perf_counter() - evaluated
            if bits < best_bits:
                best_bits, best_state = bits, {k: v.detach().clone() for k, v in model.state_dict().items()}
            points.append(
                {
                    "epoch": 0,
                    "partial_epoch": True,
                    "step": step,
                    "train_seconds": round(train_seconds, 3),
                    "val_bits_per_char": bits,
                    "train_loss": float(np.mean(losses)),
                    "learning_rate": rate,
                    "sample_0.5": "",
                }
            )
            losses = []
            next_eval = train_seconds + eval_every_seconds
    training_ended = time.perf_counter()  # what follows is scoring, which a wall-clock budget does not count
    model.load_state_dict(best_state)
    final = window_bits(model, ids, val_all, context, recipe.autocast)
    parameters = sum(p.numel() for p in model.parameters())
    kept = {"model": model} if keep_model else {}
    return {
        **kept,
        "config": {
            **asdict(recipe),
            "parameters": parameters,
            "fitted_steps": total_steps,
            "threads": torch.get_num_threads(),
        },
        "stop_reason": "time_limit",
        "training_ended": training_ended,
        "points": points,
        "best_epoch": None,
        "best_val_bits_per_char": final,
        "best_val_bits_per_char_subset": best_bits,
        "best_stateful_bits_per_char": None,
    }


# ------------------------------------------------------------------ dynamic evaluation, for the peer
# The same rule as charlm_jax.use.adapt's ``rms`` (Krause et al. 2018, RMS with a global prior), so the
# race compares like with like: each segment of held-out characters is scored (each from the
# ``context`` characters before it, the GPT's window metric), then the weights take one step on that
# segment's loss, divided by the root mean squared gradient of the training loss and decayed towards
# the trained weights. It is a few lines in PyTorch; written here, not imported, because no library
# ships it.


def gradient_scale(model, ids: np.ndarray, train_end: int, recipe: GPTRecipe, batches: int = 32, batch: int = 32):
    """Mean squared gradient of the training loss at the trained weights, over ``batches`` batches of
    ``batch`` windows of the training head (a fixed seed: the same text gives the same scale)."""
    import torch
    from torch.nn import functional as F

    rng = np.random.default_rng(0)
    offsets = np.arange(recipe.block_size + 1)
    parameters = list(model.parameters())
    total = [torch.zeros_like(p) for p in parameters]
    model.eval()
    for _ in range(batches):
        starts = rng.integers(0, train_end - recipe.block_size - 1, batch)
        windows = torch.from_numpy(ids[starts[:, None] + offsets].astype(np.int64))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.autocast):
            logits = model(windows[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
        grads = torch.autograd.grad(loss, parameters)
        for t, g in zip(total, grads):
            t.add_(g.square())
    return [t / batches for t in total]


def adaptive_log2_probs(
    model,
    ids: np.ndarray,
    start: int,
    scale,
    *,
    learning_rate: float,
    decay: float,
    segment: int = 25,
    rule: str = "rms",
    eps: float = 1e-5,
    end: int | None = None,
) -> np.ndarray:
    """log2-probability of each of ``ids[start:end]``, read ``segment`` characters at a time, the weights
    adapted after each by ``rule`` (charlm_jax.use.adapt's ``rms`` or ``sgd``); ``learning_rate=0`` is static scoring. A segment is read as the last ``segment``
    predictions of one window of ``block_size`` characters ending at its last target, so every character
    has at least ``block_size - segment`` characters of context (one forward pass per segment: scoring
    each character from its own 60-character window costs ``segment`` times more). The model's weights
    are restored afterwards."""
    import torch
    from torch.nn import functional as F

    end = len(ids) if end is None else end
    width = model.positions.num_embeddings
    if start < width or segment > width - 1:
        raise ValueError(f"start must be at least {width} and segment below {width}")
    parameters = list(model.parameters())
    trained = [p.detach().clone() for p in parameters]
    rms = [s.sqrt() for s in scale]
    mean_rms = sum(r.sum() for r in rms) / sum(r.numel() for r in rms)
    rates = [torch.clamp(decay * r / mean_rms, max=1.0) for r in rms]
    out = np.empty(end - start, np.float64)
    model.eval()
    try:
        for begin in range(start, end, segment):
            stop = min(begin + segment, end)
            window = torch.from_numpy(ids[stop - width : stop + 1].astype(np.int64))[None]
            count = stop - begin
            logits = model(window[:, :-1])[0, -count:]
            losses = F.cross_entropy(logits, window[0, -count:], reduction="none")
            out[begin - start : stop - start] = -losses.detach().double().numpy() / math.log(2.0)
            if learning_rate == 0.0:
                continue
            grads = torch.autograd.grad(losses.mean(), parameters)
            with torch.no_grad():
                for p, g, p0, r, rate in zip(parameters, grads, trained, rms, rates):
                    if rule == "rms":
                        p.add_(-learning_rate * g / (r + eps) + rate * (p0 - p))
                    else:
                        p.add_(-learning_rate * g + decay * (p0 - p))
    finally:
        with torch.no_grad():
            for p, p0 in zip(parameters, trained):
                p.copy_(p0)
        model.train()
    return out
