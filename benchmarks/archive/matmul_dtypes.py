"""Does bfloat16 make the LSTM's matrix products faster on this CPU? (a probe for a compute-dtype option)

The fused LSTM layer spends its time in three products: the input projection of a whole window
((time x batch) x in @ in x 4H), the recurrent product at every step (batch x H @ H x 4H, 60 times in
a row) and the output layer. Each is timed here in float32 and in bfloat16 (float32 accumulation),
in JAX and, when installed, in PyTorch, interleaved round by round; the report gives the bf16/f32
time ratio per product. It measures products only, not a training step: a ratio well below 1 is the
evidence a mixed-precision option would need before it is built, not a claim of a faster run.

    python benchmarks/archive/matmul_dtypes.py                     # the fast recipe's shapes (2 x 192, batch 64 per device)
    python benchmarks/archive/matmul_dtypes.py --hidden 256 --batch 128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/common.py
from common import device_name, interleaved, platform_tag, versions, write_results

DTYPES = ("float32", "bfloat16")


def jax_products(batch: int, hidden: int, vocab: int, maxlen: int, dtype: str) -> dict:
    """Jitted closures for the three products in ``dtype`` (accumulating in float32)."""
    rng = np.random.default_rng(0)
    cast = jnp.dtype(dtype)
    window = jnp.asarray(rng.standard_normal((maxlen * batch, hidden)), cast)
    kernel = jnp.asarray(rng.standard_normal((hidden, 4 * hidden)) / np.sqrt(hidden), cast)
    recurrent = jnp.asarray(rng.standard_normal((4 * hidden, hidden)) / np.sqrt(hidden), cast)
    output = jnp.asarray(rng.standard_normal((hidden, vocab)), cast)
    h0 = jnp.zeros((batch, hidden), cast)

    @jax.jit
    def projection(x, w):
        return jnp.dot(x, w, preferred_element_type=jnp.float32)

    @jax.jit
    def recurrence(h, w_in, w_back):
        # 60 dependent products, as the scan does them: the next input is a function of this output.
        def step(carry, _):
            gates = jnp.dot(carry, w_in, preferred_element_type=jnp.float32)
            return jnp.tanh(jnp.dot(gates.astype(cast), w_back, preferred_element_type=jnp.float32)).astype(cast), None

        return jax.lax.scan(step, h, None, length=maxlen)[0]

    return {
        "projection": lambda: projection(window, kernel).block_until_ready(),
        "recurrence": lambda: recurrence(h0, kernel, recurrent).block_until_ready(),
        "output": lambda: projection(window, output).block_until_ready(),
    }


def torch_products(batch: int, hidden: int, vocab: int, maxlen: int, dtype: str) -> dict:
    import torch

    cast = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    window = torch.randn(maxlen * batch, hidden, generator=gen).to(cast)
    kernel = (torch.randn(hidden, 4 * hidden, generator=gen) / hidden**0.5).to(cast)
    recurrent = (torch.randn(4 * hidden, hidden, generator=gen) / hidden**0.5).to(cast)
    output = torch.randn(hidden, vocab, generator=gen).to(cast)
    h0 = torch.zeros(batch, hidden, dtype=cast)

    def recurrence():
        h = h0
        for _ in range(maxlen):
            h = torch.tanh((h @ kernel) @ recurrent)
        return h

    return {"projection": lambda: window @ kernel, "recurrence": recurrence, "output": lambda: window @ output}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="rows per device (fast: 128 over 2 devices)")
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--maxlen", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tag", default=None, help="results file stem (default: <date>-<platform>-matmul-dtypes)")
    args = parser.parse_args(argv)

    frameworks = {"jax": jax_products}
    try:
        import torch  # noqa: F401

        frameworks["torch"] = torch_products
    except ImportError:
        print("torch not installed: JAX only", file=sys.stderr)

    shape = (args.batch, args.hidden, args.vocab, args.maxlen)
    fns = {}
    for framework, build in frameworks.items():
        for dtype in DTYPES:
            for product, fn in build(*shape, dtype).items():
                fns[(framework, product, dtype)] = fn
    timings = interleaved({"/".join(key): fn for key, fn in fns.items()}, rounds=args.rounds, per_round=5)

    rows = []
    for framework in frameworks:
        for product in ("projection", "recurrence", "output"):
            f32 = timings[f"{framework}/{product}/float32"]["median_s"]
            bf16 = timings[f"{framework}/{product}/bfloat16"]["median_s"]
            rows.append(
                {
                    "framework": framework,
                    "product": product,
                    "float32_ms": f32 * 1e3,
                    "bfloat16_ms": bf16 * 1e3,
                    "bf16_over_f32": bf16 / f32,
                }
            )
    date = time.strftime("%Y-%m-%d")  # as the other scripts date their results
    device = device_name()
    lines = [
        f"# bfloat16 against float32 for the LSTM's products ({date}, {device})",
        "",
        f"`python archive/matmul_dtypes.py --batch {args.batch} --hidden {args.hidden} --vocab {args.vocab} "
        f"--maxlen {args.maxlen} --rounds {args.rounds}`; medians of {args.rounds} interleaved rounds of 5 calls.",
        "",
        "| framework | product | float32 | bfloat16 | bf16 / f32 |",
        "|---|---|---|---|---|",
    ]
    shapes = {
        "projection": f"({args.maxlen}x{args.batch})x{args.hidden} @ {args.hidden}x{4 * args.hidden}",
        "recurrence": f"{args.maxlen} steps of {args.batch}x{args.hidden} @ {args.hidden}x{4 * args.hidden} "
        f"@ {4 * args.hidden}x{args.hidden}",
        "output": f"({args.maxlen}x{args.batch})x{args.hidden} @ {args.hidden}x{args.vocab}",
    }
    for row in rows:
        lines.append(
            f"| {row['framework']} | {row['product']}: {shapes[row['product']]} | {row['float32_ms']:.3f} ms "
            f"| {row['bfloat16_ms']:.3f} ms | {row['bf16_over_f32']:.2f} |"
        )
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    write_results(
        args.tag or f"{date}-{platform_tag()}-matmul-dtypes",
        {"date": date, "device": device, "versions": versions(), "shape": vars(args), "rows": rows, "timings": timings},
        markdown,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
