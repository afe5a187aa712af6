"""Steering: the hook (a no-op at scale 0, the answer position only, a planted direction moves the answer), the
mass-mean vectors and their controls, the sentence split, the perplexity guard and the config checks."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAMILIES, ROOT, build_tiny

from dropnoise import config as dnconfig
from dropnoise import engine, prompts, sentences, steering, tasks
from dropnoise.labels import load_aliases
from dropnoise.models import decoder_layers


def batch(rows: list[list[int]]):
    ids, mask, positions, _ = engine.pad_left(rows, 0, "cpu")
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


PROMPTS = [[5, 17, 42, 9, 77, 3], [8, 120, 33]]  # two lengths: the second row is left-padded


@pytest.mark.parametrize("family", FAMILIES)
def test_scale_zero_is_an_exact_noop(family):
    model = build_tiny(family, n_layers=3)
    inputs = batch(PROMPTS)
    vector = np.random.default_rng(0).normal(size=64)
    with torch.inference_mode():
        plain = model(**inputs).logits
        with steering.Steering(model, 1, vector, 0.0):
            steered = model(**inputs).logits
    assert torch.equal(plain, steered)


def block_outputs(model, inputs) -> list[torch.Tensor]:
    """Every decoder block's output as the next block reads it (hooks registered after the steering hook see
    its change; output_hidden_states records the outputs before forward hooks replace them)."""
    seen = []

    def hook(module, args, output):
        seen.append((output[0] if isinstance(output, tuple) else output).clone())

    handles = [block.register_forward_hook(hook) for block in decoder_layers(model)]
    with torch.inference_mode():
        logits = model(**inputs).logits
    for handle in handles:
        handle.remove()
    return [*seen, logits]


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_adds_the_vector_at_the_answer_position_only(family):
    model = build_tiny(family, n_layers=3)
    inputs = batch(PROMPTS)
    vector = np.random.default_rng(1).normal(size=64)
    plain = block_outputs(model, inputs)
    with steering.Steering(model, 0, vector, 2.0):
        steered = block_outputs(model, inputs)
    # block 0's output: every row's last position moved by exactly 2 x vector, nothing else
    expected = 2.0 * torch.tensor(vector, dtype=torch.float32).expand(2, -1)
    torch.testing.assert_close(steered[0][:, -1] - plain[0][:, -1], expected)
    for layer in range(len(plain)):  # causal attention: earlier positions never see the answer position
        assert torch.equal(steered[layer][:, :-1], plain[layer][:, :-1])
    assert not torch.allclose(steered[-1][:, -1], plain[-1][:, -1])


@pytest.fixture(scope="module")
def zero_shot_trials(smol_tokenizer):
    template = prompts.load_template(ROOT / "data/prompts/zero_shot.yaml", tasks.PLACEHOLDERS["zero_shot"])
    pool = sentences.bucket(sentences.Grammar(ROOT / "data/synthetic_grammar.yaml").sentences(seed=3),
                            smol_tokenizer, [15], 10, 20_000)
    settings = {"bucket": 15, "samples_per_condition": 3, "mode": "single_class", "aliases": ["dropout_noise"]}
    return tasks.zero_shot_trials(smol_tokenizer, template, pool, load_aliases(ROOT / "data/aliases.yaml"), settings, 3)


def test_a_planted_direction_moves_the_answer_monotonically(zero_shot_trials, smol_tokenizer):
    """Along W_U[" A"] - W_U[" B"] at the last block, every trial's logit(A) - logit(B) rises with the scale, and
    the readout maps it onto the noise and dropout options of each trial's option order."""
    model = build_tiny("llama", vocab_size=len(smol_tokenizer), n_layers=2)
    tokens = prompts.option_tokens(smol_tokenizer, ("A", "B"))
    unembed = model.get_output_embeddings().weight.detach()
    direction = (unembed[tokens["A"]["primary"]] - unembed[tokens["B"]["primary"]]).numpy()
    conditions = [{"dropout": 0.0, "noise": 0.0}, {"dropout": 0.3}, {"noise": 1.0}]
    differences = []
    for scale in (-4.0, -1.0, 0.0, 1.0, 4.0):
        with steering.Steering(model, 1, direction / np.linalg.norm(direction), scale) as hook:
            rows = pd.DataFrame(engine.run(model, smol_tokenizer, zero_shot_trials, conditions, ("A", "B"), seed=1,
                                           batch_size=4, progress=False, steering=hook))
        differences.append((rows.logit_A - rows.logit_B).to_numpy())
        readout = steering.trial_readout(rows, ("A", "B"))
        noise_is_a = np.where(rows.target == "noise", rows.answer == "A", rows.answer == "B")
        np.testing.assert_allclose(readout.logit_diff, np.where(noise_is_a, 1, -1) * (rows.logit_A - rows.logit_B))
        assert (readout.answered_noise == (rows.pred_primary == np.where(noise_is_a, "A", "B"))).all()
        assert set(readout.base) == {"none", "dropout", "noise"}
    assert (np.diff(np.stack(differences), axis=0) > 0).all()
    assert (differences[0] < 0).all() and (differences[-1] > 0).all()


def test_variants_in_one_run_score_as_separate_runs_and_share_the_prompt(zero_shot_trials, smol_tokenizer):
    """Every (vector, scale) of the steering table in one engine run: each row gets its trial's variant, and the
    renderings of a trial, equal but for that, run their prompt once per condition and the last token per variant."""
    model = build_tiny("llama", vocab_size=len(smol_tokenizer), n_layers=3)
    rng = np.random.default_rng(5)
    deltas = {0: np.zeros(64), 1: 2.0 * rng.normal(size=64), 2: -3.0 * rng.normal(size=64)}
    conditions = [{"dropout": 0.0, "noise": 0.0}, {"dropout": 0.3}, {"noise": 1.0}]
    run = dict(seed=1, batch_size=4, progress=False)
    together, apart = engine.Work(), engine.Work()
    with steering.Steering(model, 1, deltas, 1.0) as hook:
        rows = pd.DataFrame(engine.run(model, smol_tokenizer, [{**t, "steer": i} for i in deltas for t in zero_shot_trials],
                                       conditions, ("A", "B"), steering=hook, work=together, **run))
    for i, delta in deltas.items():
        with steering.Steering(model, 1, delta, 1.0) as hook:
            alone = pd.DataFrame(engine.run(model, smol_tokenizer, zero_shot_trials, conditions, ("A", "B"),
                                            steering=hook, work=apart, **run))
        mine = rows[rows.steer == i].reset_index(drop=True)
        assert mine.trial_id.tolist() == alone.trial_id.tolist()
        np.testing.assert_allclose(mine[["logit_A", "logit_B"]], alone[["logit_A", "logit_B"]], atol=1e-4)
    assert not np.allclose(rows[rows.steer == 1].logit_A, rows[rows.steer == 0].logit_A)
    assert together.computed_tokens < 0.5 * apart.computed_tokens
    with steering.Steering(model, 1, deltas, 1.0) as hook:  # full recompute (families without a shared cache)
        again = pd.DataFrame(engine.run(model, smol_tokenizer, [{**t, "steer": i} for i in deltas for t in zero_shot_trials],
                                        conditions, ("A", "B"), steering=hook, prefix_cache=False, **run))
    np.testing.assert_allclose(again[["logit_A", "logit_B"]], rows[["logit_A", "logit_B"]], atol=1e-4)


def test_steering_acts_only_on_the_passes_that_score(smol_tokenizer, monkeypatch):
    """The engine's passes over a shared prefix or stem end before the answer position: the engine switches the
    steering hook off for them (otherwise the vector would go in at their last token and reach every later token
    through the cache) and on for every pass whose last position is scored."""
    template = prompts.load_template(ROOT / "data/prompts/zero_shot.yaml", tasks.PLACEHOLDERS["zero_shot"])
    pool = sentences.bucket(sentences.Grammar(ROOT / "data/synthetic_grammar.yaml").sentences(seed=3),
                            smol_tokenizer, [15], 10, 20_000)
    settings = {"bucket": 15, "samples_per_condition": 2, "mode": "single_class", "aliases": ["dropout_noise", "x_y"]}
    trials = tasks.zero_shot_trials(smol_tokenizer, template, pool, load_aliases(ROOT / "data/aliases.yaml"),
                                    settings, 3)
    model = build_tiny("llama", vocab_size=len(smol_tokenizer), n_layers=3)
    hook = steering.Steering(model, 0, np.random.default_rng(2).normal(size=64), 2.0)
    armed, scored = [], []
    model.register_forward_hook(lambda module, args, output: armed.append(hook._armed))
    score = engine.scoring.score
    monkeypatch.setattr(engine.scoring, "score", lambda *args: scored.append(1) or score(*args))
    with hook:
        engine.run(model, smol_tokenizer, trials, [{"dropout": 0.3}, {"noise": 1.0}], ("A", "B"), seed=1,
                   batch_size=4, progress=False, steering=hook)
    assert armed.count(True) == len(scored) and armed.count(False) > 0  # prefixes and stems ran unsteered

    inputs = batch(PROMPTS)
    with torch.inference_mode():
        plain = model(**inputs).logits
        with hook:
            hook.clear()
            assert torch.equal(model(**inputs).logits, plain)
            hook.set_batch([], [])
            assert not torch.equal(model(**inputs).logits, plain)


def test_mass_mean_recovers_a_planted_difference_and_shuffled_labels_give_little():
    rng = np.random.default_rng(0)
    planted = np.zeros(64)
    planted[:8] = 1.5
    y = np.tile([0, 1], 1000)
    X = rng.normal(size=(2000, 64)) + 10.0 + np.outer(y, planted)
    estimate = steering.mass_mean(X, y)
    assert estimate @ planted / (np.linalg.norm(estimate) * np.linalg.norm(planted)) > 0.95
    assert np.linalg.norm(estimate) == pytest.approx(np.linalg.norm(planted), rel=0.15)
    perturbation = np.where(y == 1, "noise", "dropout")
    units = [np.arange(2000), np.arange(2000), np.arange(2000) // 2]  # two rows per sentence, one of each class
    mass, random, shuffled = steering.build("noise_minus_dropout", X, perturbation, units, "projection_sd", seed=4)
    assert (mass.kind, random.kind, shuffled.kind) == steering.KINDS
    assert shuffled.raw_norm < 0.2 * mass.raw_norm
    assert mass.size == random.size == shuffled.size  # controls are injected with the vector's norm
    assert mass.size == pytest.approx(np.std(X @ mass.direction))
    for vector in (mass, random, shuffled):
        assert np.linalg.norm(vector.direction) == pytest.approx(1.0)
    again = steering.build("noise_minus_dropout", X, perturbation, units, "projection_sd", seed=4)
    assert np.array_equal(again[1].direction, random.direction) and np.array_equal(again[2].direction, shuffled.direction)
    clean = steering.build("perturbed_minus_clean", X, np.where(y == 1, "dropout", "none"), units, "residual_norm",
                           seed=4)[0]
    assert clean.direction @ mass.direction > 0.95 and clean.size == pytest.approx(np.linalg.norm(X, axis=1).mean())
    with pytest.raises(steering.SteeringError, match="one side"):
        steering.build("noise_minus_dropout", X, np.full(2000, "noise"), units, "projection_sd", seed=4)


def test_dev_split_is_by_sentence_seeded_and_keeps_both_classes_on_both_sides():
    trials = pd.DataFrame({"trial_id": range(40), "target": ["dropout", "noise"] * 20,
                           "sentence_id": [f"s{i // 2 if i < 20 else i}" for i in range(40)]})  # s0..s9 in both classes
    dev = steering.dev_sentences(trials, 0.5, seed=1)
    assert dev == steering.dev_sentences(trials, 0.5, seed=1) and dev != steering.dev_sentences(trials, 0.5, seed=2)
    in_dev = trials.sentence_id.isin(dev)
    assert not set(trials.sentence_id[in_dev]) & set(trials.sentence_id[~in_dev])
    for kind in ("dropout", "noise"):
        assert 0 < (in_dev & (trials.target == kind)).sum() < (trials.target == kind).sum()
    assert len(steering.held_out(trials[~in_dev], 3, seed=1)) == 6
    with pytest.raises(steering.SteeringError, match="too few"):
        steering.dev_sentences(trials.iloc[:2], 0.5, seed=1)


def test_layer_choice():
    assert steering.choose_layer("middle", [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]) == 15
    assert steering.choose_layer("middle", [0, 1]) == 1
    assert steering.choose_layer(6, [0, 3, 6]) == 6
    with pytest.raises(steering.SteeringError, match="was not captured"):
        steering.choose_layer(4, [0, 3, 6])


def test_guard_nll_does_not_depend_on_padding_and_rises_under_a_large_vector(smol_tokenizer):
    model = build_tiny("qwen3", vocab_size=len(smol_tokenizer), n_layers=2)
    texts = ["The cat sat on the mat.", "A short one.", "Rivers carry water from the hills down to the sea."]
    one = [steering.text_nll(model, smol_tokenizer, [t], 1) for t in texts]
    together = steering.text_nll(model, smol_tokenizer, texts, 3)
    assert together[1] == sum(n for _, n in one)
    assert together[0] == pytest.approx(sum(nll for nll, _ in one), rel=1e-5)
    auto = steering.text_nll(model, smol_tokenizer, texts, "auto")  # config.yaml's default batch size
    assert auto[1] == together[1] and auto[0] == pytest.approx(together[0], rel=1e-5)
    vector = np.random.default_rng(0).normal(size=64)
    with steering.Steering(model, 0, vector, 50.0, positions="all"):
        steered = steering.text_nll(model, smol_tokenizer, texts, 3)
    assert steered[0] != pytest.approx(together[0])


@pytest.mark.parametrize(
    "change,message",
    [
        ({"experiments": ["localization"]}, "needs zero_shot in probes.experiments"),
        ({"steering": {"scales": [1, 2]}}, "must include 0"),
        ({"steering": {"alias": "noise_dropout"}}, "'noise_dropout' is not among the zero_shot aliases"),
        ({"steering": {"level": 11}}, "beyond"),
    ],
)
def test_bad_steering_settings_fail_the_config_check(paper_config, change, message):
    config = copy.deepcopy(paper_config)
    config["probes"]["enabled"] = True
    config["probes"]["experiments"] = change.get("experiments", ["localization", "zero_shot"])
    config["probes"]["steering"].update(change.get("steering", {}))
    with pytest.raises(dnconfig.ConfigError, match=message):
        dnconfig.check(config, root=ROOT)
    config["probes"]["steering"]["enabled"] = False
    if "steering" in change:
        dnconfig.check(config, root=ROOT)


def test_shuffled_label_control_moves_whole_trials_as_the_design_draws_them():
    """Each dev trial gives rows at several strengths of one class: with trial effects and no class effect the real
    mass-mean difference is label noise alone, and the control must be as large; a row shuffle would average the
    trial effects away and show much less."""
    rng = np.random.default_rng(1)
    trials = np.repeat(np.arange(40), 5)
    X = rng.normal(scale=3.0, size=(40, 32))[trials] + rng.normal(scale=0.1, size=(200, 32))
    perturbation = np.where(trials % 2, "noise", "dropout")
    units = [trials, trials, trials]
    mass, _, shuffled = steering.build("noise_minus_dropout", X, perturbation, units, "projection_sd", seed=3)
    row_shuffle = np.linalg.norm(steering.mass_mean(X, rng.permutation(perturbation == "noise")))
    assert 0.6 * mass.raw_norm < shuffled.raw_norm < 1.6 * mass.raw_norm
    assert row_shuffle < 0.6 * shuffled.raw_norm
