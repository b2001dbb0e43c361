"""The peers of the book's LSTM that the benchmarks race: the book's own Keras loop and PyTorch's ``nn.LSTM``.

One home for each, so every script compares against the same code (the GPT peer is ``gpt_peer.py``). Each
builder returns a closure that blocks until its work is done, or None when the library is not installed
(``pip install -e ".[peers]"``); the caller records the skip with ``MISSING``.
"""

from __future__ import annotations

import numpy as np

MISSING = "not installed; pip install -e '.[peers]'"


def torch_device(prefer_gpu: bool = True):
    import torch

    return torch.device("cuda" if prefer_gpu and torch.cuda.is_available() else "cpu")


def torch_lstm(vocab: int, hidden: int, layers: int = 1, device=None):
    """(lstm, head): one-hot characters in, as the book's model reads them; cuDNN's LSTM on a GPU."""
    import torch

    lstm = torch.nn.LSTM(vocab, hidden, layers, batch_first=True).to(device)
    return lstm, torch.nn.Linear(hidden, vocab).to(device)


def torch_training_step(
    vocab: int, hidden: int, batch: int, maxlen: int, *, layers=1, dense=False, dtype="float32", device=None
):
    """One RMSprop(0.01) step (Keras' rho 0.9, epsilon 1e-7) on a fixed batch, ending in a host sync (``loss.item``).

    ``dense``: every position is a target (the dense objective), else only the last (the book's). ``dtype``
    ``bfloat16`` runs under ``torch.autocast``.
    """
    try:
        import torch
    except ImportError:
        return None
    device = device or torch_device()
    torch.manual_seed(0)
    lstm, head = torch_lstm(vocab, hidden, layers, device)
    optimizer = torch.optim.RMSprop([*lstm.parameters(), *head.parameters()], lr=0.01, alpha=0.9, eps=1e-7)
    ids = torch.as_tensor(np.random.default_rng(0).integers(0, vocab, (batch, maxlen + 1)), device=device)
    inputs = torch.nn.functional.one_hot(ids[:, :-1], vocab).float()  # (batch, time, vocab)
    targets = ids[:, 1:] if dense else ids[:, -1]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step():
        optimizer.zero_grad()
        with autocast:
            out, _ = lstm(inputs)
            logits = head(out if dense else out[:, -1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab).float(), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        loss.item()

    return step


def torch_generation_loop(vocab: int, hidden: int, maxlen: int, length: int, rows: int = 1, device=None):
    """The book's loop in PyTorch: one LSTM step per character from Python, sampled on the device at
    temperatures spread over 0.2-1.2, one per row."""
    try:
        import torch
    except ImportError:
        return None
    device = device or torch_device()
    torch.manual_seed(0)
    lstm, head = torch_lstm(vocab, hidden, 1, device)
    lstm.eval(), head.eval()
    eye = torch.eye(vocab, device=device)
    spread = torch.linspace(0.2, 1.2, rows) if rows > 1 else torch.ones(1)
    temperatures = spread.to(device)[:, None]  # (rows, 1)

    def loop():
        with torch.no_grad():
            out, state = lstm(eye[torch.zeros(rows, maxlen, dtype=torch.long, device=device)])
            logits = head(out[:, -1])
            for _ in range(length):
                char = torch.multinomial(torch.softmax(logits / temperatures, dim=-1), 1)  # (rows, 1)
                out, state = lstm(eye[char], state)
                logits = head(out[:, -1])
            char.cpu()

    return loop


def keras_book_model(vocab: int, hidden: int, maxlen: int):
    import keras

    return keras.Sequential(
        [keras.Input((maxlen, vocab)), keras.layers.LSTM(hidden), keras.layers.Dense(vocab, activation="softmax")]
    )


def keras_book_loop(vocab: int, hidden: int, maxlen: int, chars: int):
    """The book's generation loop: one-hot window, ``model.predict`` per character, its numpy ``sample``."""
    try:
        model = keras_book_model(vocab, hidden, maxlen)
    except ImportError:
        return None
    rng = np.random.default_rng(0)

    def sample(preds, temperature=1.0):  # the book's function
        preds = np.asarray(preds).astype("float64")
        preds = np.log(preds) / temperature
        exp_preds = np.exp(preds)
        preds = exp_preds / np.sum(exp_preds)
        probas = rng.multinomial(1, preds / preds.sum(), 1)
        return np.argmax(probas)

    def loop():
        generated = list(rng.integers(0, vocab, maxlen))
        for _ in range(chars):
            sampled = np.zeros((1, maxlen, vocab))
            for t, char in enumerate(generated[-maxlen:]):
                sampled[0, t, char] = 1.0
            preds = model.predict(sampled, verbose=0)[0]
            generated.append(sample(preds, 1.0))

    return loop


def keras_training_step(vocab: int, hidden: int, batch: int, maxlen: int):
    """The book's ``model.fit`` step: categorical cross-entropy, RMSprop(0.01), one batch."""
    try:
        import keras

        model = keras_book_model(vocab, hidden, maxlen)
    except ImportError:
        return None
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.RMSprop(learning_rate=0.01))
    rng = np.random.default_rng(0)
    x = np.eye(vocab, dtype=np.float32)[rng.integers(0, vocab, (batch, maxlen))]
    y = np.eye(vocab, dtype=np.float32)[rng.integers(0, vocab, batch)]
    return lambda: model.train_on_batch(x, y)  # returns a Python float: synchronised
