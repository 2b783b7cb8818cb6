"""``steer eval``: the paper's benchmark protocols, applied to a base model, base + vectors, base + a
LoRA adapter, or a training run's checkpoint; results written as JSON, never pickle.

Protocol (fact sheet section 4): samples per problem from the benchmark (32 for AIME/AMC, 1 else);
temperature 0 (greedy) for a base model and 1.0 / top_p 1.0 for a trained one unless set; greedy
forces one sample and one seed; metrics avg@k, pass@1, mean@k per seed, then mean ± std over seeds;
the paper's Average is the per-seed mean of the benchmarks' primary metrics. Prompts and grading
are those of training (``render_prompt``, ``rewards.pool.Grader``).

Output directory of one evaluated thing ("target"):

    settings.yaml              the resolved settings
    target.json                what is evaluated and the protocol (compared on re-runs)
    seed-<s>/<benchmark>.jsonl one line per problem: index, id, problem, answer, prompt_length,
                               max_new_tokens, samples [{text, correct, length, stopped, has_answer}]
    seed-<s>/.shards/          finished units of work not merged yet (gone when the run completes)
    summary.json               metrics per benchmark and seed, mean ± std, the Average, and how many
                               processes ran for how long (written last)

Every sample has its own seed (eval seed, benchmark, problem, sample index), so results do not
depend on the number of processes, the batch size or the order of generation. Work is cut into
shards dealt to the processes of a ``torchrun`` / ``accelerate launch`` (``parallel``,
``shards``); each is written whole when done (temporary file, then rename), so a re-run with the
same protocol skips finished (benchmark, seed) files and finished shards, and rebuilds
``summary.json``.

Modules: protocol, benchmarks, targets, models (what is loaded), generation, shards, parallel,
outputs, summary, metrics (pure), rewards (``--reward``), progress, run (``evaluate``) and generate
(``steer generate``). May import: patching, rollout, rewards, data, vectors, models, train.checkpoint
and the top-level helpers; nothing here imports report, lens or study.
"""
