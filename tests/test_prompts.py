"""Templates, rendering with real chat templates, span location (identical sentences too) and letter checks."""

from __future__ import annotations

import pytest

from conftest import CHAT_TEMPLATES, ROOT
from dropnoise import prompts, tasks

SENTENCE = "The old lighthouse keeper painted the railings blue before the storm."


@pytest.fixture(params=["smollm2", *CHAT_TEMPLATES])
def chat_tokenizer(request, smol_tokenizer):
    """SmolLM2's own ChatML template, then each paper family's real template on the same vocabulary."""
    original = smol_tokenizer.chat_template
    if request.param != "smollm2":
        smol_tokenizer.chat_template = (ROOT / "data/chat_templates" / f"{request.param}.jinja").read_text()
    yield smol_tokenizer
    smol_tokenizer.chat_template = original


@pytest.fixture(scope="module")
def localization_template():
    return prompts.load_template(ROOT / "data/prompts/localization.yaml", tasks.PLACEHOLDERS["localization"])


def test_shipped_templates_have_twenty_distinct_variants():
    for name, experiment in [("localization", "localization"), ("localization_control", "localization_control")]:
        template = prompts.load_template(ROOT / f"data/prompts/{name}.yaml", tasks.PLACEHOLDERS[experiment])
        assert len(template.variants) == 20
        assert len({repr(v) for v in template.variants.values()}) == 20
        assert template.letters == ("A", "B") and template.system == "" and template.prefill == "the answer is:"


def test_render_keeps_empty_system_and_continues_prefill(chat_tokenizer, localization_template):
    fields = {"sentence_a": SENTENCE, "sentence_b": SENTENCE}
    msgs = prompts.messages(localization_template, "v00", [("turns", fields)])
    text = prompts.render(chat_tokenizer, msgs)
    assert text.endswith("the answer is:")  # continued, not closed, and no new generation prompt
    assert text.count(SENTENCE) == 2
    if "<think>" in text:  # Qwen3 renders an empty think block before the prefill, thinking disabled
        assert "<think>\n\n</think>\n\nthe answer is:" in text


def test_identical_sentences_are_located_by_their_anchor(chat_tokenizer, localization_template):
    pool = tasks.pd.DataFrame(
        [{"sentence_id": "s0", "sentence": SENTENCE, "sentence_tokens": 1}]
    )
    trials = tasks.localization_trials(chat_tokenizer, localization_template, pool, [1], 12, seed=1)
    for trial in trials:
        ids, offsets = prompts.tokenize(chat_tokenizer, trial["text"])
        span = trial["spans"][0]
        decoded = chat_tokenizer.decode(ids[span["start"] : span["end"]])
        assert SENTENCE in decoded and len(decoded) - len(SENTENCE) <= 3  # boundary tokens may merge a neighbour
        first = trial["text"].find(SENTENCE)
        second = trial["text"].find(SENTENCE, first + 1)
        start_char = offsets[span["start"]][1] - 1
        expected = first if trial["target"] == "A" else second
        assert expected <= start_char < expected + len(SENTENCE)
    assert {t["target"] for t in trials} == {"A", "B"}


def test_span_includes_tokens_that_straddle_the_boundary():
    offsets = [(0, 0), (0, 4), (4, 9), (9, 12), (12, 13)]  # a special token, then words
    assert prompts.char_to_token_span(offsets, 5, 10) == (2, 4)  # starts and ends mid-token
    assert prompts.char_to_token_span(offsets, 4, 9) == (2, 3)
    with pytest.raises(prompts.PromptError):
        prompts.char_to_token_span(offsets, 20, 25)


def test_missing_sentence_or_anchor_is_a_clear_error():
    with pytest.raises(prompts.PromptError, match="not found"):
        prompts.find_char_span("Sentence A: x", "y")
    with pytest.raises(prompts.PromptError, match="anchor"):
        prompts.find_char_span("Sentence A: x", "x", anchor="Sentence C: ")


def test_option_letters_must_be_single_tokens(smol_tokenizer):
    tokens = prompts.option_tokens(smol_tokenizer, ("A", "B"))
    assert tokens["A"]["primary"] == smol_tokenizer.encode(" A", add_special_tokens=False)[0]
    assert len(tokens["A"]["variants"]) == 4

    class Splitting:
        def encode(self, text, add_special_tokens=False):
            return [1, 2]

    with pytest.raises(prompts.PromptError, match="single-token"):
        prompts.option_tokens(Splitting(), ("A",))


def test_prompt_set_rejects_letters_that_are_not_single_tokens(smol_tokenizer, paper_config, tmp_path):
    """Before any GPU job: the prompt set is built on the submit host, the scoring on the GPU."""
    from dropnoise import pipeline

    assert len(smol_tokenizer.encode(" Zqxv", add_special_tokens=False)) > 1
    template = tmp_path / "control.yaml"
    source = (ROOT / "data/prompts/localization_control.yaml").read_text()
    template.write_text(source.replace("letters: [A, B]", "letters: [A, Zqxv]", 1))
    assert "Zqxv" in template.read_text()
    smol_tokenizer.save_pretrained(tmp_path / "tokenizer")
    config = {**paper_config, "experiments": {"localization_control": {
        **paper_config["experiments"]["localization_control"], "template": str(template)}}}
    out = tmp_path / "localization_control.jsonl"
    with pytest.raises(prompts.PromptError, match="single-token"):
        pipeline.build_prompt_set("smollm2-135m", str(tmp_path / "tokenizer"), "localization_control", config, None, out)
    assert not out.exists()


def test_template_with_wrong_placeholders_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        'system: ""\nprefill: "the answer is:"\nletters: [A, B]\n'
        'variants:\n  v00:\n    - {role: user, content: "Sentence A: {sentence_a} Sentence B: {sentense_b}"}\n'
    )
    with pytest.raises(prompts.PromptError, match="sentense_b"):
        prompts.load_template(bad, {"turns": {"sentence_a", "sentence_b"}})
