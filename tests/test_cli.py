"""The CLI end to end on a tiny corpus, and every bad input as one line on stderr with exit 2."""

import functools
import http.server
import json
import socket
import subprocess
import sys
import threading

import pytest

import charlm_jax
from charlm_jax.cli.app import main
from charlm_jax.data.corpus import load_text

from helpers import TINY_CLI_FLAGS

TINY_FLAGS = [
    *TINY_CLI_FLAGS,
    "--sample-length",
    "20",
    "--no-progress",
]


@pytest.fixture()
def text_file(tmp_path, tiny_text):
    path = tmp_path / "tiny.txt"
    path.write_text(tiny_text, encoding="utf-8")
    return path


def run_cli(capsys, *argv):
    code = main(list(map(str, argv)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, fragment):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charlm-jax: error: "), err
    assert fragment in lines[0], err
    assert "Traceback" not in err


def test_train_then_generate_end_to_end(capsys, tmp_path, text_file):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", "--text", text_file, "--epochs", "2", "--out", out, *TINY_FLAGS)
    assert code == 0
    assert stdout.count("------ temperature:") == 8  # four temperatures, two epochs
    assert "bits/char" in stdout
    code, stdout, _ = run_cli(
        capsys,
        "generate",
        "--checkpoint",
        out,
        "--prompt",
        "the quick",
        "--length",
        "30",
        "--temperature",
        "0",
        "1.0",
        "--mode",
        "window",
    )
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0] == '--- Generating with seed: "the quick"'
    assert lines[1] == "------ temperature: 0" and len(lines[2]) == len("the quick") + 30
    # Resume extends the same run to a third epoch.
    code, stdout, _ = run_cli(
        capsys, "train", "--text", text_file, "--epochs", "3", "--out", out, "--resume", "--no-progress"
    )
    assert code == 0 and "resuming at step" in stdout and "epoch 3/3" in stdout


def test_generate_is_reproducible_and_seed_dependent(capsys, trained_run):
    out, _ = trained_run
    args = ["generate", "--checkpoint", out, "--length", "40", "--temperature", "1.0"]
    first = run_cli(capsys, *args, "--seed", "1")[1]
    again = run_cli(capsys, *args, "--seed", "1")[1]
    other = run_cli(capsys, *args, "--seed", "2")[1]
    assert first == again and first != other


def test_help_shows_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in [
        ("--maxlen", "60"),
        ("--step", "3"),
        ("--hidden-size", "128"),
        ("--batch-size", "128"),
        ("--learning-rate", "0.01"),
        ("--epochs", "60"),
        ("--temperatures", "0.2 0.5 1 1.2"),
        ("--sample-length", "400"),
    ]:
        assert flag in text
        assert f"(default: {default})" in text.split(flag, 2)[-1], flag


@pytest.mark.parametrize(
    "content,fragment",
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("short text", "too short for one training window"),
        (b"caf\xe9 au lait " * 50, "is not UTF-8"),
    ],
)
def test_bad_text_inputs(capsys, tmp_path, content, fragment):
    path = tmp_path / "input.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code, _, err = run_cli(capsys, "train", "--text", path, "--out", tmp_path / "run", *TINY_FLAGS)
    assert_one_line_error(code, err, fragment)


def test_directory_as_text_is_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--text", tmp_path, "--out", tmp_path / "run")
    assert_one_line_error(code, err, "is a directory")


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--prompt", "Ωthe"], "prompt has 1 character(s) not in the model's vocabulary: 'ω'"),
        (["--temperature", "-0.5"], "temperature must be >= 0"),
        (["--length", "0"], "length must be a positive integer"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--top-k", "0"], "top_k must be a positive integer"),
        (["--prompt", ""], "prompt is empty"),
    ],
)
def test_bad_generation_inputs(capsys, trained_run, args, fragment):
    out, _ = trained_run
    code, _, err = run_cli(capsys, "generate", "--checkpoint", out, *args)
    assert_one_line_error(code, err, fragment)


def test_missing_checkpoint(capsys, tmp_path):
    code, _, err = run_cli(capsys, "generate", "--checkpoint", tmp_path / "nope")
    assert_one_line_error(code, err, "no checkpoint directory")


def test_bad_config_value(capsys, tmp_path, text_file):
    code, _, err = run_cli(capsys, "train", "--text", text_file, "--out", tmp_path / "r", "--maxlen", "0")
    assert_one_line_error(code, err, "maxlen must be >= 1")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_url(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLM_JAX_CACHE", str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{_free_port()}/corpus.txt"
    code, _, err = run_cli(capsys, "train", "--text", url, "--out", tmp_path / "run")
    assert_one_line_error(code, err, "cannot download")


def test_url_is_downloaded_once_into_the_cache_and_checked(tmp_path, tiny_text):
    served = tmp_path / "served"
    served.mkdir()
    (served / "corpus.txt").write_text(tiny_text)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/corpus.txt"
        cache = tmp_path / "cache"
        import hashlib

        digest = hashlib.sha256(tiny_text.encode()).hexdigest()
        assert load_text(url, cache_dir=cache, sha256=digest) == tiny_text
        server.shutdown()  # the second read must come from the cache
        assert load_text(url, cache_dir=cache) == tiny_text
        from charlm_jax.errors import CharLMError

        with pytest.raises(CharLMError, match="sha256"):
            load_text(url, cache_dir=cache, sha256="0" * 64)
    finally:
        server.server_close()


def test_builtin_default_corpus_needs_no_network(monkeypatch):
    import socket

    def refused(*args, **kwargs):
        raise AssertionError("the built-in corpus tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(socket, "getaddrinfo", refused)
    text = load_text(None)
    assert len(text) > 400_000 and "python" in text.lower()


def test_subprocess_error_has_no_traceback_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "charlm_jax.cli.app", "train", "--text", str(tmp_path / "missing.txt")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("charlm-jax: error:") and "Traceback" not in result.stderr


def test_one_seed_one_text_streamed_or_not_whatever_the_chunk(capsys, trained_run):
    """A row's text depends only on the seed, its index and its settings: `--stream` prints exactly what the
    batched call prints, for every temperature and chunk size."""
    out, _ = trained_run
    args = [
        "generate",
        "--checkpoint",
        out,
        "--prompt",
        "the quick",
        "--length",
        "40",
        "--seed",
        "5",
        "--temperatures",
        "0.2",
        "0.5",
        "1.0",
        "1.2",
        "--top-k",
        "8",
        "--repetition-penalty",
        "1.2",
    ]
    code, whole, _ = run_cli(capsys, *args)
    assert code == 0 and whole.count("------ temperature:") == 4
    for chunk in ("7", "40", "200"):
        code, streamed, _ = run_cli(capsys, *args, "--stream", "--chunk", chunk)
        assert code == 0 and streamed == whole, chunk
    assert_one_line_error(*run_cli(capsys, *args, "--stream", "--chunk", "0")[::2], "chunk must be a positive integer")


def test_generate_with_repetition_controls_and_the_gumbel_sampler(capsys, trained_run):
    out, _ = trained_run
    args = ["generate", "--checkpoint", out, "--prompt", "the quick", "--length", "60"]
    code, stdout, _ = run_cli(
        capsys,
        *args,
        "--temperature",
        "0",
        "--no-repeat-ngram",
        "3",
        "--repetition-penalty",
        "1.3",
        "--sampler",
        "gumbel",
    )
    assert code == 0
    text = stdout.splitlines()[2]
    generated = [text[i : i + 3] for i in range(len("the quick") - 2, len(text) - 2)]
    assert len(generated) == len(set(generated))  # greedy, yet no 3-gram repeats after the prompt
    # At a temperature where the sampler acts, --sampler gumbel draws other characters from the same seed.
    sampled = {
        sampler: run_cli(capsys, *args, "--temperature", "1.0", "--sampler", sampler)[1]
        for sampler in ("gumbel", "inverse_cdf")
    }
    assert sampled["gumbel"] != sampled["inverse_cdf"]


def test_eval_prints_bits_per_char_and_json(capsys, trained_run, text_file):
    out, _ = trained_run
    code, stdout, _ = run_cli(capsys, "eval", "--checkpoint", out, "--text", text_file)
    assert code == 0 and stdout.strip().endswith("characters (window mode)") and "bits/char over" in stdout
    code, stdout, _ = run_cli(capsys, "eval", "--checkpoint", out, "--text", text_file, "--mode", "stateful", "--json")
    record = json.loads(stdout)
    assert code == 0 and record["mode"] == "stateful" and record["checkpoint"] == str(out)
    # The CLI's figure is the API's score of the same text, to the last digit it prints.
    expected = charlm_jax.bits_per_char(charlm_jax.load(out), text_file.read_text(), mode="stateful")
    assert record["characters"] == len(text_file.read_text()) - 1
    assert record["bits_per_char"] == pytest.approx(expected, rel=1e-12)


def test_eval_refuses_unknown_characters_in_one_line(capsys, trained_run, tmp_path):
    out, _ = trained_run
    path = tmp_path / "other.txt"
    path.write_text("the quick brown fox jumps over the lazy dog; zebra ~ quartz " * 3)
    code, _, err = run_cli(capsys, "eval", "--checkpoint", out, "--text", path)
    assert_one_line_error(code, err, "not in the model's vocabulary")


def test_epochs_zero_is_refused(capsys, tmp_path, text_file):
    code, _, err = run_cli(capsys, "train", "--text", text_file, "--out", tmp_path / "run", "--epochs", "0")
    assert_one_line_error(code, err, "epochs must be >= 1")
    assert not (tmp_path / "run").exists()


def test_resume_with_no_more_epochs_says_so(capsys, tmp_path, trained_run, text_file):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(trained_run[0], out)
    code, _, err = run_cli(
        capsys, "train", "--text", text_file, "--out", out, "--resume", "--epochs", "2", "--no-progress"
    )
    assert_one_line_error(code, err, "already has 2 epoch(s): pass --epochs greater than 2")


@pytest.mark.parametrize("command", ["train", "generate", "eval"])
def test_a_file_where_a_directory_belongs_is_one_line_and_left_untouched(capsys, tmp_path, text_file, command):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    nested = existing / "run"  # a directory inside a file
    for path in (existing, nested):
        if command == "train":
            argv = ["train", "--text", text_file, "--out", path, *TINY_FLAGS]
        else:
            argv = [command, "--checkpoint", path] + (["--text", text_file] if command == "eval" else [])
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, "is a file")
    assert existing.read_text() == "keep me"


def test_generate_beam_prints_ranked_continuations_and_refuses_what_it_ignores(trained_run, capsys):
    from charlm_jax.cli.app import main

    run = str(trained_run[0])
    assert (
        main(["generate", "--checkpoint", run, "--prompt", "the ", "--beam", "3", "--length", "20", "--stop", "."]) == 0
    )
    out = capsys.readouterr().out
    assert out.count("------ ") == 3 and "log2p" in out
    assert main(["generate", "--checkpoint", run, "--beam", "3", "--top-p", "0.9"]) == 2
    assert "does not read --top-p" in capsys.readouterr().err
