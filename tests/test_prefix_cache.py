"""Prefix and stem reuse: running each trial's unperturbed prefix once and its suffix under every condition, and a
family of renderings' perturbed stem once for all of them, gives the scores of full recompute, on tiny models of
every family (sliding-window layers and post-norms included), for localization prompts (one span), few-shot prompts
(several perturbed spans, the first one early) and zero-shot prompts under several aliases."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import FAMILIES, ROOT, build_tiny
from dropnoise import engine, models, prompts, sentences, tasks
from dropnoise.labels import load_aliases

SCORES = ("logit_A", "logit_B", "prob_A", "sum_prob_B", "logit_diff", "log_prob_correct", "entropy")
PREDICTIONS = ("pred_primary", "pred_aggregate", "pred_argmax")


def template(name):
    return prompts.load_template(ROOT / f"data/prompts/{name}.yaml", tasks.PLACEHOLDERS[name])


@pytest.fixture(scope="module")
def pool(smol_tokenizer):
    grammar = sentences.Grammar(ROOT / "data/synthetic_grammar.yaml")
    return sentences.bucket(grammar.sentences(seed=6), smol_tokenizer, [7, 15], 12, 50_000)


@pytest.fixture(scope="module")
def shapes(smol_tokenizer, pool):
    """Trials and conditions of two prompt shapes; prompt lengths vary within each, prefixes exceed the tiny
    models' sliding window (16 tokens)."""
    localization = tasks.localization_trials(smol_tokenizer, template("localization"), pool, [7, 15], 3, seed=5)
    settings = {"bucket": 15, "k": [1, 2], "label_conditions": ["correct", "empty"], "aliases": ["x_y"],
                "samples_per_condition": 2}
    aliases = load_aliases(ROOT / "data/aliases.yaml")
    few_shot = tasks.few_shot_trials(smol_tokenizer, template("few_shot"), pool, aliases, settings, seed=5)
    settings = {**settings, "label_conditions": ["correct", "swapped"]}  # renderings that differ from a label on
    few_shot_labels = tasks.few_shot_trials(smol_tokenizer, template("few_shot"), pool, aliases, settings, seed=5)
    settings = {"bucket": 15, "mode": "single_class", "aliases": ["none", "dropout_noise", "x_y", "masking_jitter"],
                "samples_per_condition": 2}
    zero_shot = tasks.zero_shot_trials(smol_tokenizer, template("zero_shot"), pool, aliases, settings, seed=5)
    return {
        "localization": (localization, [{"target": "dropout", "dropout": 0.0}, {"target": "dropout", "dropout": 0.5},
                                        {"target": "noise", "noise": 0.0}, {"target": "noise", "noise": 2.0}]),
        "few_shot": (few_shot, [{"dropout": 0.0, "noise": 0.0}, {"dropout": 0.4, "noise": 0.0},
                                {"dropout": 0.4, "noise": 1.5}]),
        "few_shot_labels": (few_shot_labels, [{"dropout": 0.0, "noise": 0.0}, {"dropout": 0.4, "noise": 1.5}]),
        "zero_shot": (zero_shot, [{"dropout": 0.0}, {"dropout": 0.4}, {"noise": 0.0}, {"noise": 1.5}]),
    }


def run(model, tokenizer, trials, conditions, prefix_cache, batch_size=5):
    work = engine.Work()
    rows = engine.run(model, tokenizer, trials, conditions, ("A", "B"), seed=2, batch_size=batch_size,
                      progress=False, prefix_cache=prefix_cache, work=work)
    return pd.DataFrame(rows), work


@pytest.mark.parametrize("shape", ["localization", "few_shot", "zero_shot"])
@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_reuse_matches_full_recompute(family, shape, shapes, smol_tokenizer):
    trials, conditions = shapes[shape]
    model = build_tiny(family, vocab_size=len(smol_tokenizer), n_layers=3)
    assert models.shares_prefix_cache(model)
    full, full_work = run(model, smol_tokenizer, trials, conditions, prefix_cache=False)
    cached, work = run(model, smol_tokenizer, trials, conditions, prefix_cache=True)
    assert work.computed_tokens < full_work.computed_tokens  # the prefixes really were reused
    assert work.passes == full_work.passes
    assert len(cached) == len(full) == sum(engine.applies(t, c) for t in trials for c in conditions)
    for column in SCORES:
        assert cached[column].to_numpy() == pytest.approx(full[column].to_numpy(), abs=1e-4, rel=1e-4), column
    for column in PREDICTIONS:
        assert (cached[column] == full[column]).all()
    clean = full[full.strength == 0].set_index(["trial_id", "perturbation"]).logit_A
    perturbed = full[full.strength > 0].set_index(["trial_id", "perturbation"]).logit_A
    assert (clean.groupby("trial_id").first() != perturbed.groupby("trial_id").first()).all()  # spans did matter


@pytest.mark.parametrize("family", FAMILIES)
def test_trials_of_one_template_share_their_prefix_once(family, shapes, smol_tokenizer):
    """One condition per trial, as in a shard of the paper's grid: the only reuse left is across trials, and it
    keeps the scores of full recompute (a sliding window wide enough never to bind)."""
    trials, _ = shapes["few_shot"]
    conditions = [{"dropout": 0.4, "noise": 1.5}]
    model = build_tiny(family, vocab_size=len(smol_tokenizer), n_layers=3, window=4096)
    full, full_work = run(model, smol_tokenizer, trials, conditions, prefix_cache=False, batch_size=8)
    cached, work = run(model, smol_tokenizer, trials, conditions, prefix_cache=True, batch_size=8)
    assert work.computed_tokens < full_work.computed_tokens - len(trials)  # shared tokens ran once per group
    for column in SCORES:
        assert cached[column].to_numpy() == pytest.approx(full[column].to_numpy(), abs=1e-4, rel=1e-4), column


@pytest.mark.parametrize("shape", ["zero_shot", "few_shot_labels"])
@pytest.mark.parametrize("family", FAMILIES)
def test_renderings_of_one_trial_share_their_perturbed_stem(family, shape, shapes, smol_tokenizer, monkeypatch):
    """The aliases of a zero-shot trial differ only in their option line, a few-shot trial's label conditions from
    its first label on (its later spans then run in the leaves): the shared stem runs once per condition, with the
    scores of full recompute and of prefix reuse alone."""
    trials, conditions = shapes[shape]
    model = build_tiny(family, vocab_size=len(smol_tokenizer), n_layers=3, window=4096)
    full, full_work = run(model, smol_tokenizer, trials, conditions, prefix_cache=False)
    stems, work = run(model, smol_tokenizer, trials, conditions, prefix_cache=True)
    monkeypatch.setattr(engine, "families", lambda *args: [])
    prefixes, prefix_work = run(model, smol_tokenizer, trials, conditions, prefix_cache=True)
    assert work.computed_tokens < prefix_work.computed_tokens < full_work.computed_tokens
    if shape == "zero_shot":
        assert work.computed_tokens < 0.6 * prefix_work.computed_tokens
    for column in SCORES:
        assert stems[column].to_numpy() == pytest.approx(full[column].to_numpy(), abs=1e-4, rel=1e-4), column
        assert stems[column].to_numpy() == pytest.approx(prefixes[column].to_numpy(), abs=1e-4, rel=1e-4), column
    for column in PREDICTIONS:
        assert (stems[column] == full[column]).all()


@pytest.mark.parametrize("family", ["gemma3", "olmo3"])
def test_family_groups_stay_inside_a_sliding_window(family, pool, smol_tokenizer):
    """Every family fits a window as long as the longest prompt, but a group pads its families to common widths;
    groups that would outgrow the window run as plain trials, so the scores stay those of full recompute."""
    settings = {"bucket": 15, "mode": "single_class", "samples_per_condition": 6,
                "aliases": ["none", "dropout_noise", "x_y", "masking_jitter", "64726f706f7574_6e6f697365"]}
    trials = tasks.zero_shot_trials(smol_tokenizer, template("zero_shot"), pool,
                                    load_aliases(ROOT / "data/aliases.yaml"), settings, seed=5)
    conditions = [{"dropout": 0.0}, {"dropout": 0.4}, {"noise": 0.0}, {"noise": 1.5}]
    encoded = [prompts.tokenize(smol_tokenizer, t["text"])[0] for t in trials]
    window = max(map(len, encoded))
    found = engine.families(trials, encoded, [engine.split_point(t) for t in trials], window)
    assert len(found) == 12 and engine._columns(found, encoded) > window  # together they would outgrow it
    model = build_tiny(family, vocab_size=len(smol_tokenizer), n_layers=2, window=window)
    full, _ = run(model, smol_tokenizer, trials, conditions, prefix_cache=False, batch_size=64)
    cached, _ = run(model, smol_tokenizer, trials, conditions, prefix_cache=True, batch_size=64)
    for column in SCORES:
        assert cached[column].to_numpy() == pytest.approx(full[column].to_numpy(), abs=1e-4, rel=1e-4), column


def test_a_run_under_one_perturbation_leaves_the_other_class_out(shapes, smol_tokenizer):
    """Single-class zero-shot trials of the other class run under no condition here: their families drop out and
    cost nothing."""
    trials, _ = shapes["zero_shot"]
    model = build_tiny("llama", vocab_size=len(smol_tokenizer), n_layers=2)
    full, _ = run(model, smol_tokenizer, trials, [{"dropout": 0.4}], prefix_cache=False)
    cached, work = run(model, smol_tokenizer, trials, [{"dropout": 0.4}], prefix_cache=True)
    dropout = [t for t in trials if t["target"] == "dropout"]
    _, alone = run(model, smol_tokenizer, dropout, [{"dropout": 0.4}], prefix_cache=True)
    assert len(cached) == len(full) == len(dropout) and work.computed_tokens == alone.computed_tokens
    for column in SCORES:
        assert cached[column].to_numpy() == pytest.approx(full[column].to_numpy(), abs=1e-4, rel=1e-4), column


def test_a_family_stem_ends_where_the_renderings_differ_and_never_inside_a_span():
    trials = [{"base_id": 0, "spans": [{"start": 3, "end": 6, "kind": "dropout"}]},
              {"base_id": 0, "spans": [{"start": 3, "end": 6, "kind": "dropout"}]},
              {"base_id": 1, "spans": [{"start": 2, "end": 8, "kind": "noise"}]},
              {"base_id": 1, "spans": [{"start": 2, "end": 8, "kind": "noise"}]},
              {"base_id": 2, "spans": [{"start": 2, "end": 4, "kind": "noise"}]}]
    encoded = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 0, 0, 0],
               [1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 0, 7, 8, 9], [1, 2, 3, 4, 5]]
    splits = [engine.split_point({**t, "n_prompt_tokens": len(e)}) for t, e in zip(trials, encoded)]
    found = engine.families(trials, encoded, splits, window=None)
    # base 0: stem [3, 7), after its span; base 1 differs inside its span, so no stem; base 2 is alone
    assert found == [engine.Family(members=(0, 1), split=3, stem_end=7)]
    assert engine.families(trials, encoded, splits, window=8) == []  # a window that could bind: no stems
    from dropnoise.perturb import Span, TrialPerturbation

    perturbation = TrialPerturbation(5, (Span(3, 6, "dropout", 0.5), Span(8, 9, "noise", 1.0)))
    assert engine.restrict(perturbation, 0, 7).spans == (Span(3, 6, "dropout", 0.5), Span(0, 0, "noise", 0.0))
    assert engine.restrict(perturbation, 7, 10).spans == (Span(0, 0, "noise", 0.0), Span(8, 9, "noise", 1.0))
    assert engine.restrict(TrialPerturbation(5, (Span(3, 6, "dropout", 0.5),)), 7, 10) is None


def test_a_binding_sliding_window_keeps_trials_apart(shapes, smol_tokenizer):
    """Pads after a shared prefix would shift a binding sliding window, so such groups share nothing across trials
    (and still match full recompute, which test_prefix_reuse_matches_full_recompute checks)."""
    trials, _ = shapes["few_shot"]
    conditions = [{"dropout": 0.4, "noise": 1.5}]
    model = build_tiny("gemma3", vocab_size=len(smol_tokenizer), n_layers=3)
    assert models.attention_window(model) == 16 < min(t["n_prompt_tokens"] for t in trials)
    assert models.attention_window(build_tiny("llama")) is None
    _, full_work = run(model, smol_tokenizer, trials, conditions, prefix_cache=False, batch_size=8)
    _, work = run(model, smol_tokenizer, trials, conditions, prefix_cache=True, batch_size=8)
    assert work.computed_tokens == full_work.computed_tokens


def test_pads_go_after_the_shared_prefix():
    ids, mask, positions, offsets = engine.pad_left([[5, 6, 7, 8], [5, 6, 9]], 0, "cpu", after=2)
    assert ids.tolist() == [[5, 6, 7, 8], [5, 6, 0, 9]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 1]]
    assert positions.tolist()[1][3] == 2 and offsets == [0, 1]  # token 2 of row 1 sits at column 1 + 2
    assert engine.common_prefix([[5, 6, 7], [5, 6, 9], [5, 6]]) == 2
    assert engine.common_prefix([[5], [4]]) == 0


def test_batch_size_does_not_change_cached_scores(shapes, smol_tokenizer):
    trials, conditions = shapes["few_shot"]
    model = build_tiny("gemma3", vocab_size=len(smol_tokenizer), n_layers=3)
    one, _ = run(model, smol_tokenizer, trials, conditions, prefix_cache=True, batch_size=1)
    many, _ = run(model, smol_tokenizer, trials, conditions, prefix_cache=True, batch_size=7)
    for column in SCORES:
        assert one[column].to_numpy() == pytest.approx(many[column].to_numpy(), abs=1e-4, rel=1e-4), column


def test_unproven_family_falls_back_to_full_recompute_and_says_so(shapes, smol_tokenizer, monkeypatch, caplog):
    trials, conditions = shapes["localization"]
    model = build_tiny("olmo2", vocab_size=len(smol_tokenizer))
    cached, _ = run(model, smol_tokenizer, trials, conditions, prefix_cache=True)
    monkeypatch.setattr(models, "PREFIX_CACHE_FAMILIES", models.PREFIX_CACHE_FAMILIES - {"olmo2"})
    with caplog.at_level("WARNING"):
        fallback, work = run(model, smol_tokenizer, trials, conditions, prefix_cache=True)
    assert "prefix reuse is off for model type 'olmo2'" in caplog.text
    assert work.computed_tokens >= work.prompt_tokens  # every pass ran the whole prompt
    for column in SCORES:
        assert fallback[column].to_numpy() == pytest.approx(cached[column].to_numpy(), abs=1e-4, rel=1e-4), column


def test_split_point_keeps_every_perturbable_span_and_the_last_token_in_the_suffix():
    trial = {"n_prompt_tokens": 30, "spans": [{"start": 4, "end": 9, "kind": "none"},
                                              {"start": 12, "end": 20, "kind": "dropout"},
                                              {"start": 22, "end": 27, "kind": "noise"}]}
    assert engine.split_point(trial) == 12  # an always-clean span may sit in the prefix
    assert engine.split_point({"n_prompt_tokens": 30, "spans": [{"start": 30, "end": 30, "kind": "target"}]}) == 29


def test_auto_batch_size_follows_free_memory():
    model = build_tiny("llama", vocab_size=1000)
    assert engine.auto_batch_size(model, 500, free=10**12) == engine.AUTO_BATCH_CAP["cpu"]
    small = engine.auto_batch_size(model, 500, free=20_000_000)
    assert 1 <= small < engine.AUTO_BATCH_CAP["cpu"]
    assert engine.auto_batch_size(model, 500, free=1) == 1
    assert engine.auto_batch_size(model, 500) >= 1  # this machine's own free memory
    every_position = engine.auto_batch_size(model, 500, free=200_000_000, logit_positions=500)  # logits of all tokens
    assert 1 <= every_position < engine.auto_batch_size(model, 500, free=200_000_000)


def test_engine_agrees_with_the_reference_loop(shapes, smol_tokenizer):
    """The benchmark's reference (batch 1, whole prompt, every condition run on its own) scores like the engine."""
    from dropnoise import benchmark

    trials, conditions = shapes["localization"]
    model = build_tiny("qwen3", vocab_size=len(smol_tokenizer))
    ours, _ = run(model, smol_tokenizer, trials, conditions, prefix_cache=True)
    reference = pd.DataFrame(benchmark.reference_run(model, smol_tokenizer, trials, conditions, ("A", "B"), seed=2))
    key = ["trial_id", "perturbation", "strength"]
    merged = ours.merge(reference, on=key, suffixes=("", "_ref"))
    assert len(merged) == len(ours) == len(reference)
    for column in ("logit_A", "logit_B", "entropy"):
        assert merged[column].to_numpy() == pytest.approx(merged[f"{column}_ref"].to_numpy(), abs=1e-4, rel=1e-4)
    assert (merged.pred_argmax == merged.pred_argmax_ref).all()


def test_sharding_by_trials_or_by_conditions_gives_the_same_rows(shapes, smol_tokenizer):
    """The DAG splits an experiment into jobs by conditions or by base trials: the rows are those of one job
    either way, and a job that holds all of a trial's conditions computes its prefix once for all of them."""
    trials, conditions = shapes["few_shot"]
    model = build_tiny("llama", vocab_size=len(smol_tokenizer), n_layers=3)
    keys = ["trial_id", "dropout_strength", "noise_strength"]

    def jobs(parts):
        frames, work = zip(*(run(model, smol_tokenizer, t, c, prefix_cache=True) for t, c in parts))
        return pd.concat(frames).sort_values(keys, ignore_index=True), sum(w.computed_tokens for w in work)

    one, one_tokens = jobs([(trials, conditions)])
    by_trials, trial_tokens = jobs([(tasks.shard_trials(trials, i, 2), conditions) for i in range(2)])
    by_conditions, condition_tokens = jobs([(trials, tasks.shard(conditions, i, 2)) for i in range(2)])
    assert len(one) == len(by_trials) == len(by_conditions) == len(trials) * len(conditions)
    for column in SCORES:
        for sharded in (by_trials, by_conditions):
            assert sharded[column].to_numpy() == pytest.approx(one[column].to_numpy(), abs=1e-4, rel=1e-4), column
    for column in PREDICTIONS:
        assert (by_trials[column] == one[column]).all() and (by_conditions[column] == one[column]).all()
    assert trial_tokens < condition_tokens  # each trial's prefix ran in one job, not in both
