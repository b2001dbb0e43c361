"""The server under load: 1, 4, 16 and 64 concurrent clients, each streaming 400 characters, over loopback.

    python benchmarks/serve_load.py --checkpoint runs/pydoc-auto600/best [--rounds 3] [--tag NAME]

The server is the real command (``charlm-jax serve --port 0``) in a process of its own; the clients are one
asyncio loop in this process, speaking HTTP/1.1 on raw sockets (light enough to leave the cores to the
server). Every request has its own seed and prompt. Per level, interleaved over ``--rounds``:

* characters per second in all (every client's 400 characters over the level's wall time);
* time to the first characters (from sending the request to its first piece: waiting to join, reading the
  prompt, the first chunk), p50 and p99 over the requests;
* per-character latency while streaming: each later piece's wait since the previous piece divided by its
  characters, every character weighted alike; p50 and p99;
* at 16 clients, the same 16 requests sent one at a time (a server without batching serves them so): the
  concurrent run's characters/s over that one's;
* the cost against one direct ``charlm_jax.generate`` call of the same rows (16 temperatures in one call, in
  this process while the server is idle): served wall time over direct;
* failed requests (any status but 200, a stream without its end event), and the server's resident memory
  after the first round and after the last (flat: no leak).

Targets (issue 49): 16 clients >= 8x the characters/s of 16 served one at a time; p99 per-character latency
at 16 clients <= 3x the single client's p50; no failure. Writes results/<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import record, write_results

LEVELS = (1, 4, 16, 64)
LENGTH = 400
PROMPTS = ("the ", "def ", "import ", "class ", "return ", "in the ", "a ", "for ")


async def stream_one(port: int, body: dict) -> dict:
    """One streamed request: its pieces' (arrival, characters), and whether it ended as it should."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps({**body, "stream": True}).encode()
    sent = time.perf_counter()
    writer.write(
        b"POST /generate HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    while (await reader.readline()) not in (b"\r\n", b""):
        pass  # headers
    pieces, ended, buffer = [], False, b""
    while True:
        size_line = await reader.readline()  # chunked transfer encoding
        if not size_line:
            break
        size = int(size_line.strip() or b"0", 16)
        if size == 0:
            break
        buffer += await reader.readexactly(size)
        await reader.readexactly(2)
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            text = event.decode()
            if text.startswith("event: end"):
                ended = True
            elif text.startswith("data: "):
                pieces.append((time.perf_counter(), len(json.loads(text[6:])["text"])))
    writer.close()
    return {"sent": sent, "pieces": pieces, "ok": status == 200 and ended}


def request_body(index: int, seed: int) -> dict:
    return {
        "prompt": PROMPTS[index % len(PROMPTS)],
        "length": LENGTH,
        "temperature": 0.5 + 0.05 * (index % 8),
        "seed": seed,
    }


async def level(port: int, clients: int, seed: int, one_at_a_time: bool = False) -> dict:
    bodies = [request_body(i, seed + i) for i in range(clients)]
    started = time.perf_counter()
    if one_at_a_time:
        results = [await stream_one(port, body) for body in bodies]
    else:
        results = await asyncio.gather(*(stream_one(port, body) for body in bodies))
    wall = time.perf_counter() - started
    waits, weights, first = [], [], []
    for result in results:
        first.append(result["pieces"][0][0] - result["sent"])
        for (before, _), (arrival, characters) in zip(result["pieces"], result["pieces"][1:]):
            waits.append((arrival - before) / characters)
            weights.append(characters)
    per_char = np.repeat(np.asarray(waits), np.asarray(weights))
    characters = sum(sum(c for _, c in r["pieces"]) for r in results)
    return {
        "clients": clients,
        "wall_s": wall,
        "chars_per_s": characters / wall,
        "first_p50_ms": float(np.percentile(first, 50) * 1e3),
        "first_p99_ms": float(np.percentile(first, 99) * 1e3),
        "latency_p50_ms": float(np.percentile(per_char, 50) * 1e3),
        "latency_p99_ms": float(np.percentile(per_char, 99) * 1e3),
        "failed": sum(not r["ok"] for r in results) + sum(sum(c for _, c in r["pieces"]) != LENGTH for r in results),
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(checkpoint: str, chunk: int) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-m", "charlm_jax.cli", "serve", "--checkpoint", checkpoint, "--port", "0"]
    command += ["--chunk", str(chunk)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert server.stdout is not None
    for line in server.stdout:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if found:
            return server, int(found.group(1))
    raise RuntimeError(f"the server did not start: {server.wait()}")


def direct_seconds(checkpoint: str, rows: int, rounds: int) -> float:
    """One ``generate`` call of ``rows`` rows of 400 characters, median of ``rounds`` (compiled first)."""
    import charlm_jax

    lm = charlm_jax.load(checkpoint)
    temperatures = tuple(0.5 + 0.05 * (i % 8) for i in range(rows))
    charlm_jax.generate(lm, "the ", temperatures=temperatures, length=LENGTH)
    times = []
    for seed in range(rounds):
        started = time.perf_counter()
        charlm_jax.generate(lm, "the ", temperatures=temperatures, length=LENGTH, seed=seed)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def chunk_seconds(checkpoint: str, chunk: int, sizes=(1, 16), calls: int = 30) -> dict[str, float]:
    """One decoding chunk of the server's batch at ``sizes`` rows, alone (no HTTP): the compute bound of
    batching on this machine. Median seconds per chunk."""
    import jax
    import jax.numpy as jnp

    import charlm_jax
    from charlm_jax.serve.batcher import Group, Job, Row, Signature, row_keys, row_options, take_rows
    from charlm_jax.use.decode import as_key, rows_start, stream_chunk

    lm = charlm_jax.load(checkpoint)
    options = charlm_jax.GenerationOptions(length=chunk, temperatures=(1.0,))
    probe = Group(Signature.of(options), lm.params, options)
    probe.slots = [Row(Job(lm.encode_prompt("the "), options, 0, print), 0, 1, lm.vocab.decoder())]
    prompt = np.zeros((1, 16), np.int32)
    prompt[0, :4] = lm.encode_prompt("the ")
    keys = row_keys(jnp.stack([as_key(0)]), np.zeros(1, np.int32))
    start = rows_start(lm.params, keys, prompt, np.full(1, 4, np.int32), row_options(probe, 1), model=lm.model)
    seconds = {}
    for size in sizes:
        state, row_values = take_rows(start, np.zeros(size, np.int64)), row_options(probe, size)
        times = []
        for _ in range(calls + 1):
            began = time.perf_counter()
            state, ids = stream_chunk(lm.params, state, row_values, model=lm.model, count=chunk)
            jax.block_until_ready(ids)
            times.append(time.perf_counter() - began)
        seconds[str(size)] = float(np.median(times[1:]))
    return seconds


def median_rows(rows: list[dict]) -> dict:
    return {key: float(np.median([r[key] for r in rows])) for key in rows[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=16, help="the server's --chunk")
    parser.add_argument("--tag")
    args = parser.parse_args(argv)
    server, port = start_server(args.checkpoint, args.chunk)
    try:
        asyncio.run(level(port, 4, 10_000))  # the first requests compile nothing after warm-up; one more to be sure
        rss_first = rss_mb(server.pid)
        runs: dict[str, list[dict]] = {str(c): [] for c in LEVELS}
        runs["16_one_at_a_time"] = []
        for round_ in range(args.rounds):
            for clients in LEVELS:
                runs[str(clients)].append(asyncio.run(level(port, clients, 1000 * round_)))
                print(clients, runs[str(clients)][-1], flush=True)
            runs["16_one_at_a_time"].append(asyncio.run(level(port, 16, 1000 * round_, one_at_a_time=True)))
            print("16_one_at_a_time", runs["16_one_at_a_time"][-1], flush=True)
        rss_last = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    direct = direct_seconds(args.checkpoint, 16, args.rounds)
    chunks = chunk_seconds(args.checkpoint, args.chunk)
    table = {name: median_rows(rows) for name, rows in runs.items()}
    batched, serial, single = table["16"], table["16_one_at_a_time"], table["1"]
    summary = {
        "speedup_16_vs_one_at_a_time": batched["chars_per_s"] / serial["chars_per_s"],
        "p99_16_over_p50_1": batched["latency_p99_ms"] / single["latency_p50_ms"],
        "first_p99_16_over_first_p50_1": batched["first_p99_ms"] / single["first_p50_ms"],
        "served_16_over_direct_generate": batched["wall_s"] / direct,
        "direct_generate_16_rows_s": direct,
        "chunk_ms_1_row": chunks["1"] * 1e3,
        "chunk_ms_16_rows": chunks["16"] * 1e3,
        "batching_bound_16": 16 * chunks["1"] / chunks["16"],
        "failed": int(sum(r["failed"] for rows in runs.values() for r in rows)),
        "server_rss_mb_first": rss_first,
        "server_rss_mb_last": rss_last,
        "requests": int(sum(r["clients"] for rows in runs.values() for r in rows)),
    }
    data = {
        **record("serve_load.py", argv),
        "checkpoint": args.checkpoint,
        "chunk": args.chunk,
        "levels": table,
        "summary": summary,
    }
    lines = [
        f"# Serving under load, {data['date']}: {data['device']}",
        "",
        f"`{data['command']}`; {args.rounds} rounds, medians; each client streams {LENGTH} characters.",
        "",
        "| clients | chars/s in all | first characters p50 ms | p99 ms | per-char latency p50 ms | p99 ms | wall s "
        "| failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {r['chars_per_s']:.0f} | {r['first_p50_ms']:.2f} | {r['first_p99_ms']:.2f} | "
        f"{r['latency_p50_ms']:.3f} | {r['latency_p99_ms']:.3f} | "
        f"{r['wall_s']:.3f} | {r['failed']:.0f} |"
        for name, r in table.items()
    ]
    lines += [
        "",
        f"- 16 clients together / one at a time: **{summary['speedup_16_vs_one_at_a_time']:.1f}x** characters/s "
        "(target >= 8x)",
        f"- p99 per-character latency at 16 clients / p50 of one client: **{summary['p99_16_over_p50_1']:.2f}x** "
        "(target <= 3x)",
        f"- time to the first characters, p99 at 16 clients / p50 of one client: "
        f"{summary['first_p99_16_over_first_p50_1']:.2f}x",
        f"- 16 clients served / one direct generate call of 16 rows ({direct:.3f} s): "
        f"{summary['served_16_over_direct_generate']:.2f}x the wall time",
        f"- the bound batching has here: a chunk of {args.chunk} steps takes {chunks['1'] * 1e3:.2f} ms at 1 row and "
        f"{chunks['16'] * 1e3:.2f} ms at 16 rows (no HTTP), so 16 rows in one batch can give at most "
        f"{summary['batching_bound_16']:.1f}x the characters/s of one",
        f"- failed requests: {summary['failed']} of {summary['requests']}; server memory "
        f"{rss_first:.0f} MB after the first requests, {rss_last:.0f} MB after the last",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_results(args.tag or f"{data['date']}-cpu-serve-load", data, text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
