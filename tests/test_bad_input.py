"""Bad input, across every subcommand: exit code 2, one or two lines saying what is wrong and what
to do, no traceback, and nothing already on disk changed.

Each case goes through ``steer_cli.cli.main`` (the console script's entry point), not a test
shortcut, so what is checked is what a user sees.
"""

from __future__ import annotations

import errno
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from steer_cli.cli import main
from steer_cli.vectors.file import save_vectors


def run_cli(argv, capsys):
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_lm, tiny_problems):
    """A workspace with a finished tiny run, files of every kind, and bad ones (shared: the cases
    below must leave it unchanged anyway)."""
    w = tmp_path_factory.mktemp("world")
    (w / "not_json.jsonl").write_text("problem: what is 2+2\nanswer: 4\n")
    (w / "no_answer.jsonl").write_text('{"problem": "What is 1+1?"}\n{"problem": "What is 2+2?"}\n')
    (w / "empty.jsonl").write_text("")
    (w / "raising_reward.py").write_text("def fn(completions, answers, rows):\n    return [1 / 0 for c in completions]\n")
    (w / "pickle.safetensors").write_bytes(pickle.dumps({"vectors": [[0.0] * 64] * 2}))
    torch.save({"vectors": torch.zeros(2, 64)}, w / "torchsave.pt")
    (w / "text.safetensors").write_text("these are not tensors\n")
    nan = torch.zeros(2, 64)
    nan[1, 3] = float("nan")
    save_file({"vectors": nan}, str(w / "nan.safetensors"))
    save_vectors(w / "wrong_shape.safetensors", torch.ones(3, 16), base_model=str(tiny_lm))
    save_vectors(w / "good.safetensors", torch.ones(2, 64) * 0.01, base_model=str(tiny_lm), layers=[0, 1])
    save_vectors(w / "layer0_a.safetensors", torch.ones(2, 64), base_model=str(tiny_lm), layers=[0])
    save_vectors(w / "layer0_b.safetensors", torch.ones(2, 64), base_model=str(tiny_lm), layers=[0])
    bad_config = w / "bad_config_model"
    bad_config.mkdir()
    (bad_config / "config.json").write_text("{ this is not json")
    from transformers import T5Config

    T5Config(vocab_size=50, d_model=16, num_layers=1, num_heads=2, d_ff=32).save_pretrained(w / "t5")
    from transformers import BertConfig

    BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32, is_decoder=True).save_pretrained(w / "bert")
    from tiny_models import save_tiny_lm

    save_tiny_lm(w / "no_chat_template", chat_template=False)
    (w / "empty_dir").mkdir()
    (w / "a_file").write_text("I am a file\n")
    (w / "bad.yaml").write_text("train: [unclosed\n")
    # A finished run to resume, report on and guard.
    run = w / "run"
    settings = ["--model", tiny_lm, "--dataset", tiny_problems, "--output-dir", run, "--max-steps", "2",
                "--save-every", "1", "--prompts-per-step", "2", "--num-generations", "2",
                "--max-new-tokens", "4", "--set", "train.grader_workers=0"]
    assert main_ok(["train", *settings])
    w.joinpath("run_args.json").write_text(json.dumps([str(a) for a in settings]))
    return w


def main_ok(argv) -> bool:
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        return e.code in (0, None)
    return True


def train_base(w, tiny_lm, tiny_problems, out="out"):
    return ["train", "--model", tiny_lm, "--dataset", tiny_problems, "--output-dir", w / out,
            "--max-steps", "1", "--prompts-per-step", "2", "--num-generations", "2", "--max-new-tokens", "4",
            "--set", "train.grader_workers=0"]


# (name, argv builder, text the message must contain)
CASES = [
    ("missing model path", lambda w, m, d: train_base(w, w / "nope", d), "does not exist"),
    ("unreadable model config", lambda w, m, d: train_base(w, w / "bad_config_model", d), "cannot load"),
    ("model that is not a causal LM", lambda w, m, d: train_base(w, w / "t5", d), "not a causal language model"),
    ("architecture not in the patching table", lambda w, m, d: train_base(w, w / "bert", d), "patching table"),
    ("no chat template for a chat preset", lambda w, m, d: [*train_base(w, w / "no_chat_template", d),
                                                            "--set", "prompt.template=chat"], "chat template"),
    ("dataset that is not JSON", lambda w, m, d: train_base(w, m, w / "not_json.jsonl"), "line 1"),
    ("rows without the answer field", lambda w, m, d: train_base(w, m, w / "no_answer.jsonl"), "answer"),
    ("empty dataset", lambda w, m, d: train_base(w, m, w / "empty.jsonl"), "no usable"),
    ("unknown benchmark", lambda w, m, d: ["eval", "--model", m, "--benchmarks", "aime42", "--output-dir", w / "ev"],
     "did you mean"),
    ("unknown preset", lambda w, m, d: ["train", "--preset", "qwen2.5-math-7b/deepscaler/steerin"], "did you mean"),
    ("vectors of the wrong shape (eval)", lambda w, m, d: ["eval", "--model", m, "--vectors", w / "wrong_shape.safetensors",
                                                           "--benchmarks", d, "--output-dir", w / "ev"], "[3, 16]"),
    ("vectors of the wrong shape (lens)", lambda w, m, d: ["lens", w / "wrong_shape.safetensors", "--model", m], "[3, 16]"),
    ("vectors file that is not safetensors", lambda w, m, d: ["lens", w / "text.safetensors", "--model", m],
     "not a valid safetensors"),
    ("pickle offered as vectors", lambda w, m, d: ["lens", w / "pickle.safetensors", "--model", m], "pickle"),
    ("torch.save file offered as vectors", lambda w, m, d: ["eval", "--model", m, "--vectors", w / "torchsave.pt",
                                                            "--benchmarks", d, "--output-dir", w / "ev"], "pickle"),
    ("NaN inside a vectors file", lambda w, m, d: ["eval", "--model", m, "--vectors", w / "nan.safetensors",
                                                   "--benchmarks", d, "--output-dir", w / "ev"], "NaN"),
    ("negative learning rate", lambda w, m, d: [*train_base(w, m, d), "--lr", "-0.1"], "greater than 0"),
    ("zero generations", lambda w, m, d: [*train_base(w, m, d), "--num-generations", "0"], "greater than 0"),
    ("--resume into a directory that is not a run", lambda w, m, d: [*train_base(w, m, d, out="precious"),
                                                                     "--resume"], "no settings.yaml"),
    ("output dir of another run", lambda w, m, d: [*train_base(w, m, d, out="run"), "--resume", "--lr", "0.5"],
     "differ"),
    ("existing run without --resume/--overwrite", lambda w, m, d: train_base(w, m, d, out="run"), "--overwrite"),
    ("--overwrite on a directory that is not a run", lambda w, m, d: [*train_base(w, m, d, out="precious"),
                                                                      "--overwrite"], "not a steer run"),
    ("results dir with nothing to report", lambda w, m, d: ["report", w / "empty_dir"], "no results"),
    ("unwritable output dir", lambda w, m, d: train_base(w, m, d, out="a_file/out"), "a_file"),
    ("unknown --set key", lambda w, m, d: [*train_base(w, m, d), "--set", "train.learning_rate=1"], "did you mean"),
    ("config file that is not YAML", lambda w, m, d: [*train_base(w, m, d), "--config", w / "bad.yaml"], "not valid YAML"),
    ("--vectors and --adapter together", lambda w, m, d: ["eval", "--model", m, "--vectors", w / "good.safetensors",
                                                          "--adapter", w / "empty_dir", "--benchmarks", d], "--adapter"),
    ("eval data dir that does not exist", lambda w, m, d: ["eval", "--model", m, "--benchmarks", "aime24",
                                                           "--data-dir", w / "no_data", "--output-dir", w / "ev"],
     "does not exist"),
    ("extract from a directory with nothing in it", lambda w, m, d: ["extract", w / "empty_dir", "-o", w / "x.safetensors"],
     "nothing steer can extract"),
    ("merge with a layer claimed twice", lambda w, m, d: ["merge", w / "layer0_a.safetensors", w / "layer0_b.safetensors",
                                                          "-o", w / "merged.safetensors"], "layer 0"),
    ("fold vectors of the wrong shape", lambda w, m, d: ["merge", "--fold", "--model", m, "--vectors",
                                                         w / "wrong_shape.safetensors", "-o", w / "folded"], "[3, 16]"),
    ("presets --show of an unknown preset", lambda w, m, d: ["presets", "--show", "demoo"], "did you mean"),
    ("eval of a directory that is not a run", lambda w, m, d: ["eval", w / "empty_dir"], "not a steer"),
    ("unknown reward", lambda w, m, d: [*train_base(w, m, d), "--reward", "maths"], "unknown reward"),
    ("reward file that does not exist", lambda w, m, d: [*train_base(w, m, d), "--reward", w / "nope.py:fn"],
     "does not exist"),
    ("reward plug-in that raises", lambda w, m, d: [*train_base(w, m, d), "--reward", f"{w / 'raising_reward.py'}:fn"],
     "ZeroDivisionError"),
    ("eval with a layer the model lacks", lambda w, m, d: ["eval", "--model", m, "--vectors", w / "good.safetensors",
                                                           "--benchmarks", d, "--layers", "0-9", "--output-dir",
                                                           w / "ev"], "do not exist"),
    ("generate with a bad scale", lambda w, m, d: ["generate", "hi", "--model", m, "--vectors", w / "good.safetensors",
                                                   "--scale", "strong"], "not a number"),
]


@pytest.mark.parametrize("name,build,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(world, tiny_lm, tiny_problems, capsys, name, build, needle):
    (world / "precious").mkdir(exist_ok=True)
    (world / "precious" / "notes.txt").write_text("keep me")
    before = snapshot(world)
    code, out, err = run_cli(build(world, tiny_lm, tiny_problems), capsys)
    assert code == 2, f"{name}: exit {code}\n{out}\n{err}"
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.strip().splitlines() if line.strip()]
    error_lines = [line for line in lines if not line.startswith(("picked", "using", "steer "))]
    assert error_lines and error_lines[-1 if len(error_lines) == 1 else 0].startswith("error:"), err
    assert 1 <= len(error_lines) <= 2, f"{name}: expected a one- or two-line error, got:\n{err}"
    assert needle.lower() in err.lower(), f"{name}: {needle!r} not in {err!r}"
    assert snapshot(world) == before, f"{name}: files changed"


def test_at_least_25_cases():
    assert len(CASES) >= 25


def test_disk_full_while_writing_a_checkpoint(world, tiny_lm, tiny_problems, capsys, monkeypatch):
    """ENOSPC during a checkpoint write: a clear error, and the earlier checkpoint still loads."""
    run = world / "run"
    import steer_cli.train.checkpoint as ckpt

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "checkpoint-3" in str(f) or ".checkpoint-3." in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    args = json.loads((world / "run_args.json").read_text())
    idx = args.index("--max-steps")
    args[idx + 1] = "4"
    code, out, err = run_cli(["train", *args, "--overwrite"], capsys)
    assert code == 2, err
    assert "No space left on device" in err and "--resume" in err and "Traceback" not in err
    assert (run / "checkpoint-2" / "vectors.safetensors").exists()
    assert not list(run.glob(".checkpoint-3.*"))  # the partial write was cleaned up
    assert not (run / "checkpoint-3").exists()
    from steer_cli.vectors.file import load_vectors

    vectors, meta = load_vectors(run / "checkpoint-2" / "vectors.safetensors")
    assert meta["step"] == 2 and torch.isfinite(vectors).all()
