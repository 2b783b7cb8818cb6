"""Evaluation that does not depend on how it is split: per-sample seeds (the hf per-row sampler),
shards written as they finish and kept across crashes, several processes under torchrun (each
process's errors agreed, one merged result equal to one process's), and the pieces as pure
functions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.data.records import Problem
from steer_cli.errors import SteerError
from steer_cli.evaluate.parallel import Coordinator, Launch, device_slice, launch_from_env
from steer_cli.evaluate.shards import plan_shards, problem_keys, sample_seed
from steer_cli.rollout.base import SampleRequest, SamplingSpec
from steer_cli.rollout.hf import HFBackend, PerRowSampler, filter_logits

_register()
runner = CliRunner()


def eval_args(out, model, data, *extra):
    return ["eval", "--model", str(model), "--data-dir", str(data), "--benchmarks", "aime24,gsm8k", "--limit", "3",
            "--samples", "2", "--temperature", "1.0", "--seeds", "0,1", "--max-new-tokens", "8",
            "--set", "train.grader_workers=0", "-o", str(out), *map(str, extra)]


def results(out):
    """Every results file under an output directory (of one target or several), as text."""
    return {p.relative_to(out).as_posix(): p.read_text() for p in sorted(out.rglob("seed-*/*.jsonl"))}


# ---------------------------------------------------------------------------------- pure parts

def test_sample_seed_depends_on_every_part_and_nothing_else():
    base = sample_seed(0, "aime24", "p1", 3)
    assert base == sample_seed(0, "aime24", "p1", 3) and 0 <= base < 2 ** 63
    assert len({base, sample_seed(1, "aime24", "p1", 3), sample_seed(0, "aime25", "p1", 3),
                sample_seed(0, "aime24", "p2", 3), sample_seed(0, "aime24", "p1", 4)}) == 5
    problems = [Problem("a", "x", "1"), Problem("b", "y", "2"), Problem("a", "z", "3"), Problem("a", "w", "4")]
    assert problem_keys(problems) == ["a", "b", "a#1", "a#2"]


def test_shards_hold_whole_problems_and_about_shard_samples():
    shards = plan_shards(0, "aime24", 1, [0, 1, 2, 4, 5], 2, 4)
    assert [s.problems for s in shards] == [(0, 1), (2, 4), (5,)]
    assert [s.name for s in shards] == ["aime24.0-1.jsonl", "aime24.2-4.jsonl", "aime24.5-5.jsonl"]
    assert [s.problems for s in plan_shards(0, "aime24", 1, [0, 1], 32, 4)] == [(0,), (1,)]  # never split


def test_device_slice_gives_each_local_process_its_own_gpus():
    visible = [str(i) for i in range(8)]
    assert device_slice(visible, 3, 8, 1) == ["3"]
    assert device_slice(visible, 1, 4, 2) == ["2", "3"]
    assert device_slice(["5", "7"], 1, 2, 1) == ["7"]
    assert device_slice(["6"], 0, 8, 1) == ["6"]  # the launcher already gave each process its GPU
    with pytest.raises(SteerError, match="need 8 GPUs, but 4 are visible"):
        device_slice(visible[:4], 0, 4, 2)


def test_launch_environment():
    assert launch_from_env({}) == Launch(0, 1, 0, 1)
    env = {"RANK": "3", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8"}
    assert launch_from_env(env) == Launch(3, 16, 3, 8) and not launch_from_env(env).main
    with pytest.raises(SteerError, match="inconsistent launch environment"):
        launch_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def _agree_in_threads(fns, share=False):
    """Coordinators of a 2-process world sharing one in-memory store, one thread each."""
    store = torch.distributed.HashStore()
    out: list = [None, None]

    def run(rank):
        coord = Coordinator(Launch(rank, 2, rank, 2), store)
        try:
            out[rank] = ("value", coord.agree("phase", fns[rank], share=share))
        except SteerError as err:
            out[rank] = (type(err).__name__, str(err))

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def test_an_error_on_any_process_stops_all_and_the_main_process_reports_it():
    def fail():
        raise SteerError("no such file")

    assert _agree_in_threads([lambda: 1, fail]) == [("SteerError", "process 1 of 2: no such file"),
                                                    ("ReportedByMain", "process 1 of 2: no such file")]
    assert _agree_in_threads([fail, lambda: 1]) == [("SteerError", "no such file"), ("ReportedByMain", "no such file")]
    assert _agree_in_threads([lambda: [1, "a"], lambda: None], share=True) == [("value", [1, "a"]), ("value", [1, "a"])]
    assert _agree_in_threads([lambda: 1, lambda: 2]) == [("value", 1), ("value", 2)]


# ------------------------------------------------------------------------------ the hf sampler

def test_per_row_sampler_draws_from_the_filtered_softmax():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])
    temperature, top_p = 0.7, 0.9
    probs = torch.softmax(logits / temperature, -1)
    keep = torch.cumsum(probs, 0) - probs < top_p  # the smallest prefix (sorted) reaching top_p
    expected = torch.where(keep, probs, torch.zeros_like(probs))
    expected /= expected.sum()
    rows = 6000
    spec = SamplingSpec(temperature=temperature, top_p=top_p)
    sampler = PerRowSampler(list(range(rows)), spec, torch.device("cpu"))
    drawn = sampler(None, logits.repeat(rows, 1)).argmax(-1)
    freq = torch.bincount(drawn, minlength=6).float() / rows
    assert keep.tolist() == [True, True, True, False, False, False]
    torch.testing.assert_close(freq, expected, atol=0.02, rtol=0)
    # A row's draw depends on its own seed only: the same rows alone, in another batch, agree.
    alone = PerRowSampler([17], spec, torch.device("cpu"))(None, logits[None])
    batch = PerRowSampler([5, 17, 9], spec, torch.device("cpu"))(None, logits.repeat(3, 1))
    torch.testing.assert_close(alone[0], batch[1], rtol=0, atol=0)


def test_filter_logits_matches_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    scores = torch.randn(5, 40, generator=torch.Generator().manual_seed(0)) * 3
    for k in (1, 7):
        torch.testing.assert_close(filter_logits(scores, k, 1.0), TopKLogitsWarper(k)(None, scores))
    for p in (0.1, 0.5, 0.95):
        torch.testing.assert_close(filter_logits(scores, -1, p), TopPLogitsWarper(p)(None, scores))
    assert torch.equal(filter_logits(scores, -1, 1.0), scores)


@pytest.fixture(scope="module")
def hf_backend(tmp_path_factory):
    from tiny_models import save_tiny_lm

    from steer_cli.models import load_causal_lm, load_tokenizer

    path = save_tiny_lm(tmp_path_factory.mktemp("tiny"))
    return load_causal_lm(str(path), dtype="float32", device="cpu"), load_tokenizer(str(path))


def test_hf_samples_do_not_depend_on_batch_or_order(hf_backend):
    model, tok = hf_backend
    prompts = [tok.encode(t) for t in ("What is 2+2?", "Compute 17*3 please", "A much longer prompt here")]
    requests = [SampleRequest(tuple(p), 1000 + 10 * i + k, 6 + 3 * i, group=i)
                for i, p in enumerate(prompts) for k in range(3)]
    spec = SamplingSpec(temperature=1.0, top_p=0.95, stop_token_ids=(tok.eos_token_id,))

    def draw(batch_prompts, order):
        got = dict(HFBackend(model, tok, batch_prompts=batch_prompts).stream_samples([requests[i] for i in order], spec))
        return {order[j]: (c.token_ids, c.stopped) for j, c in got.items()}

    forward = list(range(len(requests)))
    reference = draw(1, forward)
    assert draw(4, forward) == reference
    assert draw(2, forward[::-1]) == reference
    for i, r in enumerate(requests):  # each its own budget, whatever shares its batch
        ids, stopped = reference[i]
        assert len(ids) <= r.max_new_tokens and (stopped or len(ids) == r.max_new_tokens)
    assert len({tuple(v[0]) for v in reference.values()}) == len(requests)  # every sample its own
    other = [SampleRequest(r.prompt, r.seed + 1, r.max_new_tokens, r.group) for r in requests]
    assert dict(HFBackend(model, tok, batch_prompts=4).stream_samples(other, spec))[0].token_ids != reference[0][0]


# ----------------------------------------------------------------------------- steer eval

def test_eval_samples_do_not_depend_on_batch_size(tiny_lm, shared_data, tmp_path):
    """Fails before per-sample seeds: prompts were seeded per batch, so the batch size changed samples."""
    outs = []
    for batch in (1, 3):
        out = tmp_path / f"batch-{batch}"
        result = runner.invoke(app, eval_args(out, tiny_lm, shared_data, "--seeds", "0",
                                              "--set", f"rollout.batch_prompts={batch}"))
        assert result.exit_code == 0, result.output
        outs.append(results(out))
    assert outs[0] == outs[1] and len(outs[0]) == 2
    texts = [s["text"] for line in outs[0]["seed-0/aime24.jsonl"].splitlines() for s in json.loads(line)["samples"]]
    assert len(set(texts)) == len(texts)


def test_a_crash_keeps_finished_shards_and_a_rerun_does_only_the_rest(tiny_lm, shared_data, tmp_path, monkeypatch):
    import steer_cli.evaluate.generation as generation

    whole = tmp_path / "whole"
    assert runner.invoke(app, eval_args(whole, tiny_lm, shared_data)).exit_code == 0

    out = tmp_path / "out"
    written = []
    write = generation.write_results

    def write_then_crash(path, lines):
        if len(written) == 2:
            raise RuntimeError("killed")
        write(path, lines)
        written.append(path)

    monkeypatch.setattr(generation, "write_results", write_then_crash)
    crashed = runner.invoke(app, eval_args(out, tiny_lm, shared_data, "--set", "eval.shard_samples=2"))
    assert crashed.exit_code != 0 and str(crashed.exception) == "killed"
    monkeypatch.setattr(generation, "write_results", write)
    # One problem of 2 samples a shard: 2 of the 3 shards of aime24 seed 0 are on disk, nothing merged.
    assert sorted(p.name for p in (out / "seed-0" / ".shards").iterdir()) == ["aime24.0-0.jsonl", "aime24.1-1.jsonl"]
    assert not list(out.glob("seed-*/*.jsonl")) and not (out / "summary.json").exists()

    asked = []
    stream = HFBackend.stream_samples

    def counting(self, requests, sampling):
        asked.extend(requests)
        return stream(self, requests, sampling)

    monkeypatch.setattr(HFBackend, "stream_samples", counting)
    again = runner.invoke(app, eval_args(out, tiny_lm, shared_data, "--set", "eval.shard_samples=4"))
    assert again.exit_code == 0, again.output
    assert "AIME24 · seed 0: 2 of 3 problems finished earlier, kept" in again.output
    assert len(asked) == (1 + 3 * 3) * 2  # its last problem and three more (benchmark, seed)s, 2 samples each
    assert results(out) == results(whole)
    assert not list(out.glob("seed-*/.shards"))


def test_results_of_batch_seeded_versions_are_not_continued(tiny_lm, shared_data, tmp_path):
    out = tmp_path / "out"
    args = eval_args(out, tiny_lm, shared_data, "--seeds", "0")
    assert runner.invoke(app, args).exit_code == 0
    target = json.loads((out / "target.json").read_text())
    del target["identity"]["sampling"]  # as written before per-sample seeds
    (out / "target.json").write_text(json.dumps(target))
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "sampling: None -> 'per-sample seeds'" in again.output


def _torchrun(args, cwd, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), "-m", "steer_cli", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_write_what_one_writes(tiny_lm, shared_data, tmp_path):
    """The base model (greedy) and vectors (sampled, T=1), each sample also scored by a reward, on
    one process and on two."""
    from steer_cli.vectors.file import save_vectors

    vectors = save_vectors(tmp_path / "v.safetensors", 0.5 * torch.randn(2, 64, generator=torch.Generator().manual_seed(0)),
                           base_model=str(tiny_lm))
    args = [a for a in eval_args("OUT", tiny_lm, shared_data, "--vectors", vectors, "--base", "--reward", "exact")
            if a not in ("--temperature", "1.0")]
    one, two = tmp_path / "one", tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "steer_cli", *[str(one) if a == "OUT" else a for a in args]],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    proc = _torchrun([str(two) if a == "OUT" else a for a in args] + ["--set", "eval.shard_samples=2",
                                                                      "--set", "rollout.batch_prompts=3"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results(two) == results(one)
    assert sorted(results(one)) == ["base/seed-0/aime24.jsonl", "base/seed-0/gsm8k.jsonl", "v/seed-0/aime24.jsonl",
                                    "v/seed-0/gsm8k.jsonl", "v/seed-1/aime24.jsonl", "v/seed-1/gsm8k.jsonl"]
    assert not list(two.rglob(".shards"))
    for label in ("base", "v"):
        s1, s2 = (json.loads((d / label / "summary.json").read_text()) for d in (one, two))
        assert (s1["processes"], s2["processes"]) == (1, 2) and s2["wall_seconds"] > 0
        assert s1["benchmarks"] == s2["benchmarks"] and s1["average"] == s2["average"]
        assert s2["benchmarks"]["gsm8k"]["reward"]["errors"] == 0 and s2["reward"]["name"] == "exact"
    line = json.loads((two / "v" / "seed-1" / "gsm8k.jsonl").read_text().splitlines()[0])
    assert all(x["reward"] in (0.0, 1.0) for x in line["samples"])
    assert proc.stdout.count("steer eval: accuracy") == 1  # the table, from the main process only
    assert proc.stderr.count("v: results in") == proc.stderr.count("base: results in") == 1


def test_bad_input_on_two_processes_is_one_error_and_writes_nothing(tiny_lm, shared_data, tmp_path):
    out = tmp_path / "out"
    proc = _torchrun(eval_args(out, tiny_lm, shared_data, "--benchmarks", "gsm8kk"), tmp_path)
    lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: unknown benchmark 'gsm8kk'; did you mean 'gsm8k'?")
    assert proc.returncode != 0 and "exitcode  : 2" in proc.stderr  # torchrun's report
    assert "steer_cli/" not in proc.stderr  # no traceback of ours
    assert not out.exists()


def test_the_bar_counts_shard_files_as_they_appear(tmp_path):
    from steer_cli.evaluate.progress import Reporter, ShardWatcher

    files = {tmp_path / f"{i}.jsonl": 2 * i + 1 for i in range(3)}
    counted = []
    watcher = ShardWatcher(files, counted.append)
    watcher.poll()
    (tmp_path / "1.jsonl").write_text("x")
    watcher.poll()
    watcher.poll()
    (tmp_path / "2.jsonl").write_text("x")
    watcher.poll([tmp_path / "2.jsonl"])
    assert counted == [3, 5]

    with Reporter(interactive=True) as reporter:  # the bar's thread starts and stops cleanly
        reporter.job("eval", files)
        (tmp_path / "0.jsonl").write_text("x")
        reporter.seen([tmp_path / "0.jsonl"])
        assert reporter._progress.tasks[0].completed == 1
        reporter._watcher.poll()  # what the thread does every half second
        assert reporter._progress.tasks[0].completed == 1 + 3 + 5
        watcher_thread = reporter._watcher
    assert reporter._progress is None and not watcher_thread.is_alive()
    quiet = Reporter(interactive=True, enabled=False)  # other processes: no bar, no lines
    quiet.job("eval", files)
    quiet.say("hello")
    assert quiet._progress is None
