"""Activation capture during perturbed inference: the right positions, no effect on the results, one clean pass
per trial, the probes: selection, and the shard file round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, build_tiny

from dropnoise import activations, capture, engine, prompts, sentences, tasks

CONDITIONS = [
    {"target": "dropout", "dropout": 0.0},
    {"target": "dropout", "dropout": 0.5},
    {"target": "noise", "noise": 0.0},
    {"target": "noise", "noise": 2.0},
    {"target": "noise", "noise": 4.0},
]


@pytest.fixture(scope="module")
def trials(smol_tokenizer):
    template = prompts.load_template(ROOT / "data/prompts/localization.yaml", tasks.PLACEHOLDERS["localization"])
    pool = sentences.bucket(sentences.Grammar(ROOT / "data/synthetic_grammar.yaml").sentences(seed=5),
                            smol_tokenizer, [7, 11], 6, 20_000)
    return tasks.localization_trials(smol_tokenizer, template, pool, [7, 11], 3, seed=5)


def run(model, tokenizer, trials, batch_size, selection=None, prefix_cache=True):
    recorder = capture.ActivationCapture(model, selection) if selection else None
    rows = engine.run(model, tokenizer, trials, CONDITIONS, ("A", "B"), seed=1, batch_size=batch_size,
                      progress=False, capture=recorder, prefix_cache=prefix_cache)
    return pd.DataFrame(rows), recorder


def everything(trials, n_layers):
    return capture.Selection(frozenset(t["trial_id"] for t in trials), {"dropout": frozenset([0.5]),
                             "noise": frozenset([2.0, 4.0])}, capture.layer_indices(n_layers, 1))


def test_capture_reads_the_residual_stream_at_the_three_sites(trials, smol_tokenizer):
    model = build_tiny("llama", vocab_size=len(smol_tokenizer), n_layers=3)
    plain, _ = run(model, smol_tokenizer, trials, 4)
    rows, recorder = run(model, smol_tokenizer, trials, 4, everything(trials, 3))
    pd.testing.assert_frame_equal(plain, rows)  # capturing changes nothing
    # one clean pass per trial (dropout 0 and noise 0 are the same pass) plus one row per perturbed condition
    assert len(recorder.rows) == len(trials) * 4
    with torch.inference_mode():
        for trial in trials:
            ids, _ = prompts.tokenize(smol_tokenizer, trial["text"])
            # hidden_states[l + 1] is block l's output, except the last, which transformers returns after the final norm
            hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1:-1]
            start, end = trial["spans"][0]["start"], trial["spans"][0]["end"]
            stored = recorder.rows[(trial["trial_id"], activations.CLEAN, 0.0)].astype(np.float32)
            for layer, h in enumerate(hidden):
                expected = torch.stack([h[0, -1], h[0, start:end].mean(0), h[0, end - 1]]).numpy()
                np.testing.assert_allclose(stored[:, layer], expected, rtol=2e-3, atol=2e-3)
            noisy = recorder.rows[(trial["trial_id"], "noise", 4.0)].astype(np.float32)
            assert not np.allclose(noisy[1:], stored[1:])  # the span sites carry the perturbation


def test_capture_averages_a_bf16_span_in_float32():
    """A bf16 model's span mean is taken in float32 and stored as float16, not rounded to bf16 (8 bits of mantissa)
    on the way."""
    model = build_tiny("llama", n_layers=1)
    recorder = capture.ActivationCapture(model, capture.Selection(frozenset([0]), {}, (0,)))
    trial = {"trial_id": 0, "spans": [{"start": 2, "end": 10, "kind": "target"}]}
    recorder.set_batch([(trial, None)], [0])
    h = (torch.randn(1, 12, 64, generator=torch.Generator().manual_seed(0)) * 30).to(torch.bfloat16)
    recorder._hook(0)(None, None, (h,))
    stored = recorder.rows[(0, activations.CLEAN, 0.0)][:, 0]
    expected = torch.stack([h[0, -1].float(), h[0, 2:10].float().mean(0), h[0, 9].float()]).numpy().astype(np.float16)
    np.testing.assert_array_equal(stored, expected)
    assert not np.array_equal(stored[1], h[0, 2:10].mean(0).float().numpy().astype(np.float16))


def test_capture_does_not_depend_on_batching_or_prefix_reuse(trials, smol_tokenizer):
    model = build_tiny("qwen3", vocab_size=len(smol_tokenizer), n_layers=2)
    _, one = run(model, smol_tokenizer, trials, 1, everything(trials, 2), prefix_cache=False)
    _, many = run(model, smol_tokenizer, trials, 5, everything(trials, 2))
    assert one.rows.keys() == many.rows.keys()
    for key in one.rows:
        np.testing.assert_allclose(one.rows[key].astype(np.float32), many.rows[key].astype(np.float32), atol=2e-3)


SHORT_ZERO_SHOT = """
system: ""
prefill: "the answer is:"
letters: [A, B]
variants:
  v00:
    - {role: user, content: "Pay close attention to how you process the following sentence: \\"{sentence}\\" Which best describes what happened?\\nA) {option_a} B) {option_b}"}
"""


@pytest.mark.parametrize("template_file", ["data/prompts/zero_shot.yaml", "short"])
def test_capture_is_the_same_when_renderings_share_a_stem(template_file, smol_tokenizer, tmp_path):
    """Zero-shot aliases share their perturbed stem: the span sites are read in the stem pass, the answer site in
    each rendering's own pass, and all three equal what full recompute records. In the short template the option
    line comes a few tokens after the sentence, so a short leaf's pads reach back to where the span sat in the
    stem: they must not be read as the span."""
    from dropnoise.labels import load_aliases

    if template_file == "short":
        (tmp_path / "short.yaml").write_text(SHORT_ZERO_SHOT)
        path = tmp_path / "short.yaml"
    else:
        path = ROOT / template_file
    template = prompts.load_template(path, tasks.PLACEHOLDERS["zero_shot"])
    pool = sentences.bucket(sentences.Grammar(ROOT / "data/synthetic_grammar.yaml").sentences(seed=5),
                            smol_tokenizer, [15], 6, 20_000)
    settings = {"bucket": 15, "mode": "single_class", "samples_per_condition": 2,
                "aliases": ["x_y", "none", "64726f706f7574_6e6f697365", "masking_jitter"]}
    trials = tasks.zero_shot_trials(smol_tokenizer, template, pool, load_aliases(ROOT / "data/aliases.yaml"),
                                    settings, seed=5)
    conditions = [{"dropout": 0.0}, {"dropout": 0.5}, {"noise": 2.0}]
    model = build_tiny("llama", vocab_size=len(smol_tokenizer), n_layers=2)
    selection = capture.Selection(frozenset(t["trial_id"] for t in trials), {"dropout": frozenset([0.5]),
                                  "noise": frozenset([2.0])}, capture.layer_indices(2, 1))
    recorded = {}
    for reuse in (False, True):
        recorder = capture.ActivationCapture(model, selection)
        work = engine.Work()
        engine.run(model, smol_tokenizer, trials, conditions, ("A", "B"), seed=1, batch_size=16, progress=False,
                   capture=recorder, prefix_cache=reuse, work=work)
        recorded[reuse] = (recorder.rows, work)
    (full, full_work), (stems, work) = recorded[False], recorded[True]
    assert work.computed_tokens < 0.6 * full_work.computed_tokens  # the stems were shared
    # dropout trials: a clean and a perturbed row; noise trials: a perturbed row
    assert full.keys() == stems.keys() and len(full) == sum(1 + (t["target"] == "dropout") for t in trials)
    for key in full:
        np.testing.assert_allclose(stems[key].astype(np.float32), full[key].astype(np.float32), atol=2e-3)


def test_selection_keeps_sampled_trials_spread_strengths_and_layer_zero():
    ids = list(range(100))
    picked = capture.sample_trials(ids, 10, seed=3, experiment="localization")
    assert len(picked) == 10 and picked == capture.sample_trials(ids, 10, seed=3, experiment="localization")
    assert capture.sample_trials(ids, None, 3, "localization") == frozenset(ids)
    assert capture.spread([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 3) == frozenset([0.0, 0.3, 0.6])
    assert capture.layer_indices(30, 4) == (0, 4, 8, 12, 16, 20, 24, 28, 29)
    chosen = capture.Selection(frozenset([1]), {"dropout": frozenset([0.3])}, (0, 1))
    assert chosen.wants(1, "dropout", 0.3) and chosen.wants(1, "none", 0.0)
    assert not chosen.wants(1, "dropout", 0.2) and not chosen.wants(2, "dropout", 0.3)


def test_zero_shot_selection_samples_the_captured_aliases_only():
    """53 aliases x 20 base trials: a sample of 40 over every rendering holds about one of the canonical labels'
    renderings; restricted to them, all 40 are."""
    names = ["dropout_noise", *(f"control_{i}" for i in range(52))]
    renderings = [{"trial_id": base * 53 + i, "alias": name} for base in range(20) for i, name in enumerate(names)]
    settings = {"trials": 40, "strengths": None, "layer_stride": 1}
    grid = {"dropout": [0.0, 0.5], "noise": [0.0, 2.0]}
    canonical = {t["trial_id"] for t in renderings if t["alias"] == "dropout_noise"}
    every = capture.select({**settings, "aliases": None}, 1, "zero_shot", renderings, grid, 2).trial_ids
    assert len(every) == 40 and len(every & canonical) < 5
    kept = capture.select({**settings, "aliases": ["dropout_noise"]}, 1, "zero_shot", renderings, grid, 2).trial_ids
    assert kept <= canonical and len(kept) == 20  # fewer renderings than the sample size: all of them
    assert capture.select(settings, 1, "zero_shot", renderings, grid, 2).trial_ids == every  # the key is optional


def test_shard_files_round_trip_and_keep_a_clean_row_once(trials, smol_tokenizer, tmp_path):
    model = build_tiny("gemma3", vocab_size=len(smol_tokenizer), n_layers=4)
    subset = capture.Selection(frozenset([trials[0]["trial_id"], trials[2]["trial_id"]]),
                               {"dropout": frozenset([0.5]), "noise": frozenset([4.0])}, capture.layer_indices(4, 2))
    _, recorder = run(model, smol_tokenizer, trials, 3, subset)
    recorder.save(tmp_path / "0.activations.npz")
    recorder.save(tmp_path / "1.activations.npz")  # a second shard that also ran the clean pass
    sites, keys = activations.load([tmp_path / "0.activations.npz", tmp_path / "1.activations.npz"])
    assert list(keys["layers"]) == [0, 2, 3]
    assert sorted(zip(keys["perturbation"], keys["strength"])) == sorted(
        [("none", 0.0), ("dropout", 0.5), ("noise", 4.0)] * 2)
    assert set(keys["trial_id"]) == subset.trial_ids
    for site in activations.SITES:
        assert sites[site].shape == (6, 3, 64) and sites[site].dtype == np.float32


def test_loaded_rows_do_not_depend_on_how_the_shards_split_them(trials, smol_tokenizer, tmp_path):
    """Shards by trials and by conditions hold the same rows in other files; the probes' seeded shuffles see one
    order either way."""
    model = build_tiny("llama", vocab_size=len(smol_tokenizer), n_layers=2)
    every = capture.Selection(frozenset(t["trial_id"] for t in trials),
                              {"dropout": frozenset([0.5]), "noise": frozenset([4.0])}, capture.layer_indices(2, 1))
    halves = {"by_trials": [trials[::2], trials[1::2]], "by_conditions": [trials, trials]}
    loaded = {}
    for way, parts in halves.items():
        files = []
        for i, part in enumerate(parts):
            conditions = CONDITIONS if way == "by_trials" else CONDITIONS[i::2]
            recorder = capture.ActivationCapture(model, every)
            engine.run(model, smol_tokenizer, part, conditions, ("A", "B"), seed=1, batch_size=3, progress=False,
                       capture=recorder)
            files.append(tmp_path / f"{way}{i}.activations.npz")
            recorder.save(files[-1])
        loaded[way] = activations.load(files)
    (a_sites, a_keys), (b_sites, b_keys) = loaded["by_trials"], loaded["by_conditions"]
    for name in ("trial_id", "perturbation", "strength"):
        assert list(a_keys[name]) == list(b_keys[name])
    for site in activations.SITES:
        np.testing.assert_allclose(a_sites[site], b_sites[site], atol=2e-3)
