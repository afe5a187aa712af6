"""The hook engine on tiny random models of every family: span-only, exact no-ops, dropout/noise statistics,
and independence from batching and padding."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import build_tiny
from dropnoise.engine import pad_left
from dropnoise.models import decoder_layers, sublayer
from dropnoise.perturb import Span, SpanPerturber, TrialPerturbation, perturb


def logits(model, ids, perturber=None, plans=None):
    with torch.inference_mode():
        if perturber is not None:
            perturber.set_batch(plans, [0] * len(plans))
        return model(input_ids=ids).logits


def one(kind, strength, start=4, end=9, seed=7):
    return TrialPerturbation(seed=seed, spans=(Span(start, end, kind, strength),))


IDS = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))  # > the tiny sliding window


@pytest.mark.parametrize("kind,strength", [("dropout", 0.5), ("noise", 1.0)])
def test_positions_before_span_are_bit_identical(tiny_model, kind, strength):
    clean = logits(tiny_model, IDS)
    with SpanPerturber(tiny_model) as perturber:
        hit = logits(tiny_model, IDS, perturber, [one(kind, strength)])
    assert torch.equal(hit[0, :4], clean[0, :4])
    assert not torch.allclose(hit[0, 4:], clean[0, 4:])
    assert not torch.allclose(hit[0, -1], clean[0, -1])  # the answer position sees the span through attention


@pytest.mark.parametrize("kind", ["dropout", "noise"])
def test_zero_strength_is_an_exact_noop(tiny_model, kind):
    clean = logits(tiny_model, IDS)
    with SpanPerturber(tiny_model, sites=("attn", "mlp", "residual")) as perturber:
        same = logits(tiny_model, IDS, perturber, [one(kind, 0.0)])
        empty = logits(tiny_model, IDS, perturber, [one(kind, 0.5, start=3, end=3)])
    assert torch.equal(same, clean)
    assert torch.equal(empty, clean)


def test_hooks_are_removed_on_exit(tiny_model):
    clean = logits(tiny_model, IDS)
    with SpanPerturber(tiny_model) as perturber:
        logits(tiny_model, IDS, perturber, [one("noise", 5.0)])
    assert torch.equal(logits(tiny_model, IDS), clean)


def capture(model, sites):
    """Forward hooks registered after the perturber's, so they see the perturbed sublayer outputs."""
    seen, handles = {}, []
    for i, layer in enumerate(decoder_layers(model)):
        for site in sites:
            module = layer if site == "residual" else sublayer(layer, site)

            def hook(mod, args, out, key=(i, site)):
                seen[key] = (out[0] if isinstance(out, tuple) else out).detach().clone()

            handles.append(module.register_forward_hook(hook))
    return seen, handles


def test_dropout_zeroes_fraction_p_and_rescales_survivors():
    model = build_tiny("llama", n_layers=2)
    p, span = 0.3, (2, 14)
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    clean_seen, handles = capture(model, ["attn", "mlp"])
    logits(model, ids)
    clean = dict(clean_seen)
    for h in handles:
        h.remove()
    with SpanPerturber(model) as perturber:
        seen, handles = capture(model, ["attn", "mlp"])
        logits(model, ids, perturber, [one("dropout", p, *span)])
    for h in handles:
        h.remove()
    first = seen[(0, "attn")][0]  # layer 0's attention input is unperturbed: output = clean * mask / (1 - p)
    reference = clean[(0, "attn")][0]
    inside = first[span[0] : span[1]]
    kept = inside != 0
    assert abs((~kept).float().mean().item() - p) < 0.05
    torch.testing.assert_close(inside[kept], reference[span[0] : span[1]][kept] / (1 - p))
    assert torch.equal(first[: span[0]], reference[: span[0]]) and torch.equal(first[span[1] :], reference[span[1] :])
    masks = {key: (value[0, span[0] : span[1]] == 0) for key, value in seen.items()}
    assert not torch.equal(masks[(0, "attn")], masks[(0, "mlp")])  # a fresh mask per sublayer
    assert not torch.equal(masks[(0, "attn")], masks[(1, "attn")])  # and per layer


def rows_perturbed(x, kind, strength, draws):
    """perturb() with every row of x under one perturbation."""
    n = x.shape[0]
    scale = 1 / (1 - strength) if kind == "dropout" else 1.0
    return perturb(x, draws, torch.full((n,), kind == "dropout"), torch.full((n,), strength), torch.full((n,), scale))


def test_dropout_masks_are_nested_and_noise_scales_the_same_draws():
    uniforms = torch.rand(64, 32, generator=torch.Generator().manual_seed(3))
    normals = torch.randn(64, 32, generator=torch.Generator().manual_seed(3))
    h = torch.ones(64, 32)
    low, high = rows_perturbed(h, "dropout", 0.2, uniforms), rows_perturbed(h, "dropout", 0.5, uniforms)
    assert torch.all((low == 0) <= (high == 0))
    assert torch.equal(low[low != 0], torch.full_like(low[low != 0], 1 / 0.8))
    zeros = torch.zeros(64, 32)
    low, high = rows_perturbed(zeros, "noise", 0.1, normals), rows_perturbed(zeros, "noise", 0.4, normals)
    torch.testing.assert_close(low * 4, high)


def test_rows_take_their_own_perturbation_with_the_reference_arithmetic():
    """Mixed rows in one call equal the reference's per-span formulas (F.dropout-style survivors x 1/(1-p); noise
    times sigma rounded to the activation dtype and added in it), bit for bit in float32 and bfloat16."""
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(6, 16, generator=torch.Generator().manual_seed(0)).to(dtype)
        uniforms = torch.rand(6, 16, generator=torch.Generator().manual_seed(1))
        normals = torch.randn(6, 16, generator=torch.Generator().manual_seed(2), dtype=dtype)
        kinds = ["dropout", "noise", "dropout", "noise", "noise", "dropout"]
        strengths = [0.3, 0.0105, 0.98, 2.5, 1.0, 0.02]
        draws = torch.stack([u if k == "dropout" else z.float() for u, z, k in zip(uniforms, normals, kinds)])
        out = perturb(x, draws, torch.tensor([k == "dropout" for k in kinds]), torch.tensor(strengths),
                      torch.tensor([1 / (1 - s) if k == "dropout" else 1.0 for k, s in zip(kinds, strengths)]))
        assert out.dtype == dtype
        for row, (kind, strength) in enumerate(zip(kinds, strengths)):
            if kind == "dropout":
                expected = x[row] * (uniforms[row] >= strength).to(dtype) * (1.0 / (1.0 - strength))
            else:
                expected = x[row] + normals[row] * strength
            assert torch.equal(out[row], expected), (dtype, kind, strength)


def test_noise_is_absolute_sigma_in_activation_dtype():
    h = torch.zeros(256, 64, dtype=torch.bfloat16)
    normals = torch.randn(256, 64, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16).float()
    out = rows_perturbed(h, "noise", 0.5, normals)
    assert out.dtype == torch.bfloat16
    assert abs(out.float().std().item() - 0.5) < 0.02
    assert abs(out.float().mean().item()) < 0.02


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_span_draws_from_its_own_seeded_stream(tiny_model, dtype):
    """At every layer and sublayer, a span's draws are those of a generator seeded by (trial seed, layer, site, span
    index), whatever else the batch holds: the hooked output equals the raw sublayer output (seen by a hook that runs
    before the perturber's) perturbed with exactly those draws, by the reference's formulas (normals drawn in the
    activation dtype, as the paper's randn_like)."""
    from dropnoise.perturb import SITES
    from dropnoise.vocabulary import derive_seed

    tiny_model = copy.deepcopy(tiny_model).to(dtype)
    rows = [IDS[0, :30].tolist(), IDS[0, :24].tolist()]
    plans = [TrialPerturbation(11, (Span(2, 6, "noise", 0.7), Span(9, 14, "dropout", 0.4))), one("dropout", 0.6, 1, 5)]
    ids, mask, positions, offsets = pad_left(rows, 0, "cpu")
    raw, handles = capture(tiny_model, ["attn", "mlp"])
    with SpanPerturber(tiny_model) as perturber, torch.inference_mode():
        hooked, more = capture(tiny_model, ["attn", "mlp"])
        perturber.set_batch(plans, offsets)
        tiny_model(input_ids=ids, attention_mask=mask, position_ids=positions)
    for h in handles + more:
        h.remove()
    for (layer, site), output in raw.items():
        expected = output.clone()
        for row, (plan, offset) in enumerate(zip(plans, offsets)):
            for index, span in enumerate(plan.spans):
                generator = torch.Generator().manual_seed(derive_seed(plan.seed, layer, SITES.index(site), index))
                tokens = slice(offset + span.start, offset + span.end)
                x = output[row, tokens]
                if span.kind == "dropout":
                    keep = torch.rand(x.shape, generator=generator) >= span.strength
                    expected[row, tokens] = x * keep * (1 / (1 - span.strength))
                else:
                    expected[row, tokens] = x + torch.randn(x.shape, generator=generator, dtype=dtype) * span.strength
        assert torch.equal(hooked[(layer, site)], expected), (layer, site)


def test_spans_that_cannot_be_applied_are_rejected_and_leave_nothing_armed(tiny_model):
    clean = logits(tiny_model, IDS)
    with SpanPerturber(tiny_model) as perturber:
        for plan, offset, message in [
            (one("noise", 1.0, 2, 6), -3, "starts before row 0"),
            (TrialPerturbation(1, (Span(2, 8, "noise", 1.0), Span(6, 9, "dropout", 0.5))), 0, "overlap"),
        ]:
            perturber.set_batch([one("noise", 5.0)], [0])  # a valid batch first: a rejected one must not leave it armed
            with pytest.raises(ValueError, match=message):
                perturber.set_batch([plan], [offset])
            assert torch.equal(logits(tiny_model, IDS), clean)
        perturber.set_batch([one("noise", 1.0, 30, 45)], [0])
        with pytest.raises(ValueError, match="ends at column 45 of a pass 40 columns wide"):
            logits(tiny_model, IDS)


def test_batched_left_padded_equals_single_trials(tiny_model):
    gen = torch.Generator().manual_seed(5)
    rows = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (30, 40, 21)]  # past the sliding window
    plans = [one("dropout", 0.4, 2, 6, seed=1), one("noise", 1.5, 3, 29, seed=2), None]
    with SpanPerturber(tiny_model) as perturber, torch.inference_mode():
        singles = []
        for row, plan in zip(rows, plans):
            ids, mask, positions, offsets = pad_left([row], 0, "cpu")
            perturber.set_batch([plan], offsets)
            singles.append(tiny_model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[0, -1])
        ids, mask, positions, offsets = pad_left(rows, 0, "cpu")
        perturber.set_batch(plans, offsets)
        batched = tiny_model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    for b, single in enumerate(singles):
        torch.testing.assert_close(batched[b], single, atol=1e-4, rtol=1e-4)


def test_layer_range_and_residual_site():
    model = build_tiny("qwen3", n_layers=3)
    clean_seen, handles = capture(model, ["residual"])
    logits(model, IDS)
    clean = dict(clean_seen)
    for h in handles:
        h.remove()
    with SpanPerturber(model, sites=("residual",), layers=(1, -1)) as perturber:
        seen, handles = capture(model, ["residual"])
        logits(model, IDS, perturber, [one("noise", 1.0)])
    for h in handles:
        h.remove()
    assert torch.equal(seen[(0, "residual")], clean[(0, "residual")])
    assert not torch.equal(seen[(1, "residual")], clean[(1, "residual")])


def test_bad_inputs_are_rejected():
    model = build_tiny("llama")
    with pytest.raises(ValueError, match="dropout rate"):
        Span(0, 3, "dropout", 1.0)
    with pytest.raises(ValueError, match="unknown perturbation"):
        Span(0, 3, "blur", 0.1)
    with pytest.raises(ValueError, match="hook site"):
        SpanPerturber(model, sites=("attention",))
    with pytest.raises(ValueError, match="outside the model's 2 layers"):
        SpanPerturber(model, layers=(0, 40))
