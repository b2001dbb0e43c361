"""The book's experiment (Deep Learning with Python, 8.1), epoch by epoch.

Trains LSTM(128) + Dense with RMSprop(0.01) on 60-character windows (step 3)
and after every epoch prints 400 characters at temperatures 0.2, 0.5, 1.0 and
1.2 from a random 60-character seed, generated in the book's ``window`` mode.
Everything is the library's defaults; this script only names them.

    python scripts/reproduce_book.py                 # built-in corpus, 60 epochs
    python scripts/reproduce_book.py --epochs 5 --text nietzsche.txt --out runs/book
"""

from __future__ import annotations

import argparse
import sys

from charlm_jax import CharLMError, TrainConfig, fit, load_text
from charlm_jax.runtime.distributed import auto_cpu_devices, configure_cpu_devices


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", help="path or URL of the training text (default: built-in corpus)")
    parser.add_argument("--epochs", type=int, default=60, help="epochs (book: 60)")
    parser.add_argument("--out", default="runs/book", help="run directory (default: runs/book)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    args = parser.parse_args(argv)
    config = TrainConfig(epochs=args.epochs, sample_mode="window")  # the book's loop re-reads the window
    configure_cpu_devices(auto_cpu_devices(config.batch_size), strict=False)  # every core, as the CLI
    try:
        result = fit(config, load_text(args.text), args.out, resume=args.resume)
    except CharLMError as error:
        print(f"reproduce_book: error: {error}", file=sys.stderr)
        return 2
    exit_status = {"interrupted": 130, "terminated": 143}  # the CLI's: 128 + SIGINT's or SIGTERM's number
    return exit_status.get(result.stop_reason.value, 0)


if __name__ == "__main__":
    sys.exit(main())
