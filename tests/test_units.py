"""Sentence pools, grids and shards, model folders, atomic outputs and the engine's batch independence."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT, build_tiny
from dropnoise import config as dnconfig
from dropnoise import engine, models, outputs, pipeline, prompts, sentences, tasks
from dropnoise.labels import load_aliases


def test_paper_grids_have_the_papers_sizes(paper_config):
    grid = dnconfig.grid(paper_config, "qwen32b", "localization")
    assert len(tasks.expand_grid(grid["dropout"])) == 50 and len(tasks.expand_grid(grid["noise"])) == 51
    llama = tasks.expand_grid(dnconfig.grid(paper_config, "llama8b", "localization")["noise"])
    assert 0.005 in llama and 0.045 in llama and len(llama) == 51 + 5  # the paper's fine extension for Llama


def test_shards_partition_the_conditions(paper_config):
    config = copy.deepcopy(paper_config)
    config["experiments"]["localization"]["shard_by"] = "conditions"
    every = tasks.conditions(dnconfig.grid(config, "olmo32b", "localization"))
    count = dnconfig.shard_count(config, "olmo32b", "localization")
    parts = [dnconfig.shard_conditions(config, "olmo32b", "localization", i) for i in range(count)]
    assert sorted(map(repr, sum(parts, []))) == sorted(map(repr, every))
    assert all(parts) and count == 8
    assert dnconfig.shard_trial_split(config, "olmo32b", "localization", 3) is None


def test_shards_by_trials_split_the_base_trials_with_all_their_renderings(paper_config, smol_tokenizer):
    every = dnconfig.experiment_conditions(paper_config, "qwen32b", "few_shot")
    count = dnconfig.shard_count(paper_config, "qwen32b", "few_shot")
    assert count == 121 and len(every) == 121  # as many jobs as cells, but each runs every cell
    assert dnconfig.shard_conditions(paper_config, "qwen32b", "few_shot", 7) == every
    assert dnconfig.shard_trial_split(paper_config, "qwen32b", "few_shot", 7) == [7, 121]
    grammar = sentences.Grammar(ROOT / "data/synthetic_grammar.yaml")
    pool = sentences.bucket(grammar.sentences(seed=1), smol_tokenizer, [15], 10, 50_000)
    template = prompts.load_template(ROOT / "data/prompts/few_shot.yaml", tasks.PLACEHOLDERS["few_shot"])
    settings = {"bucket": 15, "k": [1, 2], "label_conditions": ["correct", "swapped"], "aliases": ["none", "x_y"],
                "samples_per_condition": 3}
    trials = tasks.few_shot_trials(smol_tokenizer, template, pool, load_aliases(ROOT / "data/aliases.yaml"), settings, 0)
    parts = [tasks.shard_trials(trials, i, 4) for i in range(4)]
    assert sorted(t["trial_id"] for part in parts for t in part) == [t["trial_id"] for t in trials]
    bases = [{t["base_id"] for t in part} for part in parts]
    assert all(bases) and sum(map(len, bases)) == len(set().union(*bases))  # pairwise disjoint
    for part in parts:  # a base trial's 4 renderings stay together; both k in the first shards (round-robin)
        assert all(sum(t["base_id"] == b for t in part) == 4 for b in {t["base_id"] for t in part})
    assert {t["k"] for t in parts[0]} == {1, 2}


def test_a_models_own_sentence_length_is_in_the_pool(paper_config):
    config = copy.deepcopy(paper_config)
    assert 16 not in dnconfig.sentence_buckets(config, "qwen32b")
    config["models"]["qwen32b"]["settings"] = {"zero_shot": {"bucket": 16}}
    assert 16 in dnconfig.sentence_buckets(config, "qwen32b")
    assert dnconfig.sentence_buckets(config, "llama8b") == dnconfig.sentence_buckets(paper_config, "llama8b")


@pytest.mark.parametrize("where,value,message", [
    ("experiment", {"shards": 1001}, r"experiments.few_shot.shards: 1001 shards by trials but only 1000 "
                                     r"samples_per_condition \(lower shards, or set shard_by: conditions\)"),
    ("model", {"shard_by": "bases"}, r"models.llama8b.settings.few_shot.shard_by: 'bases' is neither"),
    ("model", {"samples_per_condition": 100}, r"models.llama8b.settings.few_shot.shards: 121 shards by trials but "
                                              r"only 100 samples_per_condition"),
])
def test_bad_sharding_fails_the_config_check(paper_config, where, value, message):
    config = copy.deepcopy(paper_config)
    if where == "experiment":
        config["experiments"]["few_shot"].update(value)
    else:
        config["models"]["llama8b"].setdefault("settings", {})["few_shot"] = value
    with pytest.raises(dnconfig.ConfigError, match=message):
        dnconfig.check(config, root=ROOT)


def test_synthetic_sentences_fill_buckets_with_exact_token_counts(smol_tokenizer):
    grammar = sentences.Grammar(ROOT / "data/synthetic_grammar.yaml")
    pool = sentences.bucket(grammar.sentences(seed=1), smol_tokenizer, [3, 15, 23], 25, 50_000)
    assert pool.groupby("sentence_tokens").size().to_dict() == {3: 25, 15: 25, 23: 25}
    for row in pool.itertuples():
        assert len(smol_tokenizer.encode(row.sentence, add_special_tokens=False)) == row.sentence_tokens
    assert pool.sentence.is_unique
    again = sentences.bucket(grammar.sentences(seed=1), smol_tokenizer, [3, 15, 23], 25, 50_000)
    assert again.equals(pool)  # seeded


def test_user_sentence_file_and_its_errors(tmp_path, smol_tokenizer):
    path = tmp_path / "mine.txt"
    path.write_text("Cats sleep.\n\nThe committee postponed the vote until next spring.\n")
    pool = sentences.bucket(sentences.file_sentences(path), smol_tokenizer, [3], 10, 100)
    assert pool.sentence.tolist() == ["Cats sleep."]
    with pytest.raises(sentences.SentenceError, match=r"no sentence of exactly \[23\] tokens"):
        sentences.bucket(sentences.file_sentences(path), smol_tokenizer, [3, 23], 10, 100)
    tokenizer_dir = tmp_path / "tokenizer"
    smol_tokenizer.save_pretrained(tokenizer_dir)
    config = {"seed": 0, "experiments": {"localization": {"buckets": [3, 7]}},
              "sentences": {"source": "synthetic", "per_bucket": 2, "max_candidates": 20_000,
                            "mix": [{"source": "file", "path": str(path)}]}, "models": {}}
    with pytest.raises(sentences.SentenceError, match=r"sentences.mix\[0\] \(file source\), in the model's own "
                                                      r"tokens: no sentence of exactly \[7\] tokens.*raise "
                                                      r"sentences.max_candidates"):
        pipeline.build_sentences(str(tokenizer_dir), config, str(tmp_path / "pool.csv"), root=ROOT)
    config["sentences"]["mix"] = [{"source": "file", "path": str(tmp_path / "gone.txt")}]
    with pytest.raises(sentences.SentenceError, match=r"gone.txt' does not exist$"):  # no advice that cannot help
        pipeline.build_sentences(str(tokenizer_dir), config, str(tmp_path / "pool.csv"), root=ROOT)
    with pytest.raises(sentences.SentenceError, match="does not exist"):
        list(sentences.file_sentences(tmp_path / "missing.txt"))


def test_tiny_model_folder_round_trip(tmp_path, paper_config):
    entry = paper_config["models"]["tiny-gemma3"]
    template = (ROOT / "data/chat_templates/gemma3.jinja").read_text()
    models.prepare_tiny("tiny-gemma3", entry, tmp_path, paper_config["models"]["smollm2-135m"], template)
    model, tokenizer = models.load(tmp_path, "float32", "cpu")
    assert tokenizer.chat_template == template
    assert len(models.decoder_layers(model)) == 2
    assert models.read_marker(tmp_path)["revision"] == "random:seed=0"


def test_a_layer_range_the_model_lacks_fails_before_the_model_loads(tmp_path, paper_config, monkeypatch):
    """With the prompts, and in inference where the range changed after them (a rerun does not rebuild prompts)."""
    entry = paper_config["models"]["tiny-gemma3"]  # multimodal config: the layer count is its text config's
    template = (ROOT / "data/chat_templates/gemma3.jinja").read_text()
    models.prepare_tiny("tiny-gemma3", entry, tmp_path, paper_config["models"]["smollm2-135m"], template)
    config = copy.deepcopy(paper_config)
    config["perturbation"]["layers"] = [0, 10]
    message = (r"perturbation.layers: layer range \[0, 10\] is outside the model's 2 layers \(0 to 1, or negative "
               r"from the end\) \(model tiny-gemma3\)")
    with pytest.raises(ValueError, match=message):
        pipeline.build_prompt_set("tiny-gemma3", str(tmp_path), "localization", config, None, tmp_path / "p.jsonl")
    outputs.write_jsonl([{"trial_id": 0}], tmp_path / "p.jsonl")
    monkeypatch.setattr(pipeline, "_load_model", lambda *args: pytest.fail("the model loaded"))
    with pytest.raises(ValueError, match=message):
        pipeline.run_shard("tiny-gemma3", str(tmp_path), str(tmp_path / "p.jsonl"), "localization",
                           [{"target": "dropout", "dropout": 0.5}], config, str(tmp_path / "out.csv"))


def test_missing_model_folder_and_offline_hub_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(models.ModelError, match="missing or incomplete"):
        models.load(tmp_path / "nope")
    import huggingface_hub

    def offline(**kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    entry = {"kind": "hf", "repo_id": "Qwen/Qwen3-32B", "revision": "9216db5781bf21249d130ec9da846c4624c16137"}
    with pytest.raises(models.ModelError, match="network access"):
        models.prepare_hf("qwen32b", entry, tmp_path / "qwen32b")


def _synthetic(config: dict, **models_) -> dict:
    """The config with its registry extended and a sentence source that needs no extra package."""
    return {**config, "models": {**config["models"], **models_},
            "sentences": {**config["sentences"], "source": "synthetic"}}


def _with_local(config: dict, key: str, folder: Path) -> dict:
    """`_synthetic` with a `local` entry for `folder` under `key`."""
    return _synthetic(config, **{key: {"kind": "local", "path": str(folder), "gpus": 0}})


def _save_tiny(folder: Path, tokenizer) -> None:
    """A model folder as save_pretrained writes it: a tiny random Llama and `tokenizer`."""
    build_tiny("llama", vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_a_local_model_folder_is_linked_checked_and_loads_as_saved(tmp_path, paper_config, smol_tokenizer):
    mine, out = tmp_path / "mine", tmp_path / "models/mine"
    saved = build_tiny("qwen3", vocab_size=len(smol_tokenizer))
    saved.save_pretrained(mine)
    smol_tokenizer.save_pretrained(mine)
    config = _with_local(paper_config, "mine", mine)
    pipeline.prepare_model("mine", config, out, root=ROOT)
    assert all((out / p.name).is_symlink() for p in mine.iterdir())  # linked, not copied
    assert models.read_marker(out)["revision"].startswith(f"local:{mine}:")
    model, tokenizer = models.load(out, "float32", "cpu")
    ids = torch.tensor([tokenizer("The cat sat.")["input_ids"]])
    assert torch.equal(model(ids).logits, saved(ids).logits)
    assert tokenizer.chat_template == smol_tokenizer.chat_template


def test_a_download_the_hub_could_not_finish_is_not_taken_for_a_model(tmp_path, paper_config, smol_tokenizer,
                                                                      monkeypatch):
    """Offline, the hub client returns a stopped download's folder as it is, without an error."""
    import huggingface_hub

    snapshot = tmp_path / "snapshot"
    build_tiny("llama", vocab_size=len(smol_tokenizer)).save_pretrained(snapshot, max_shard_size="200KB")
    smol_tokenizer.save_pretrained(snapshot)
    shards = sorted(p.name for p in snapshot.glob("model-*.safetensors"))
    assert len(shards) > 1

    def stopped(local_dir, **kwargs):  # every file but the last shard
        for item in snapshot.iterdir():
            if item.name != shards[-1]:
                shutil.copy(item, Path(local_dir) / item.name)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", stopped)
    entry = {"kind": "hf", "repo_id": "me/tiny", "revision": "0" * 40, "gpus": 0}
    with pytest.raises(models.ModelError, match=f"models.tiny: the model folder is incomplete, it lacks {shards[-1]}"):
        pipeline.prepare_model("tiny", _synthetic(paper_config, tiny=entry), tmp_path / "models/tiny", root=ROOT)
    assert not (tmp_path / "models/tiny").exists()


def test_a_local_folder_without_safetensors_weights_stops_at_preparation(tmp_path, paper_config, smol_tokenizer):
    mine = tmp_path / "pickled"
    _save_tiny(mine, smol_tokenizer)
    (mine / "model.safetensors").rename(mine / "pytorch_model.bin")  # (weights are never unpickled: the name suffices)
    config = _with_local(paper_config, "pickled", mine)
    with pytest.raises(models.ModelError, match=r"models.pickled: the model folder is incomplete, it lacks "
                                                r"model.safetensors.*safetensors only"):
        pipeline.prepare_model("pickled", config, tmp_path / "models/pickled", root=ROOT)


def test_an_inference_shard_with_no_conditions_stops_before_the_model_loads(tmp_path, paper_config):
    prompts_file = tmp_path / "p.jsonl"
    outputs.write_jsonl([{"trial_id": 0}], prompts_file)
    with pytest.raises(ValueError, match="this shard has 1 trials and 0 conditions"):
        pipeline.run_shard("llama8b", str(tmp_path / "no-model"), str(prompts_file), "localization", [], paper_config,
                           str(tmp_path / "out.csv"))


def _set_layers(folder: Path, n: int) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": n}))


@pytest.mark.parametrize("fault, message", [
    ("layers", r"its weights lack \d+ of the model's tensors \(e.g. model.layers.2."),
    ("fewer layers", r"its weights hold decoder blocks up to 1 but config.json says num_hidden_layers: 1"),
    ("vocab", r"its tokenizer has token ids up to \d+ but config.json says vocab_size: 64"),
    ("tokenizer", r"it lacks a tokenizer \(tokenizer.json or tokenizer.model or vocab.json\)"),
])
def test_a_folder_whose_parts_disagree_stops_at_preparation(tmp_path, paper_config, smol_tokenizer, fault, message):
    """transformers fills tensors its config names and the weights lack with random values, and only warns."""
    mine = tmp_path / "mine"
    build_tiny("olmo2", vocab_size=64 if fault == "vocab" else len(smol_tokenizer)).save_pretrained(mine)
    if fault != "tokenizer":
        smol_tokenizer.save_pretrained(mine)
    if fault.endswith("layers"):
        _set_layers(mine, 1 if fault == "fewer layers" else 3)  # two blocks saved
    config = _with_local(paper_config, "mine", mine)
    with pytest.raises(models.ModelError, match=f"models.mine: .*{message}"):
        pipeline.prepare_model("mine", config, tmp_path / "models/mine", root=ROOT)
    assert not (tmp_path / "models/mine").exists()


def test_preparation_reads_the_weights_names_and_shapes_only(tmp_path, paper_config, smol_tokenizer, monkeypatch):
    """A 32B model's check must not read its 65 GB: the weights' files give names and shapes, nothing else."""
    import safetensors
    import transformers.modeling_utils

    real = safetensors.safe_open

    class HeadersOnly:
        def __init__(self, path, framework, **kwargs):
            self.file = real(path, framework)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def keys(self):
            return self.file.keys()

        def get_slice(self, name):  # a slice that can say its shape and nothing else
            return type("Shape", (), {"get_shape": lambda _, shape=self.file.get_slice(name).get_shape(): shape})()

    monkeypatch.setattr(safetensors, "safe_open", HeadersOnly)
    monkeypatch.setattr(transformers.modeling_utils, "safe_open", HeadersOnly)
    mine = tmp_path / "mine"
    _save_tiny(mine, smol_tokenizer)
    _set_layers(mine, 3)
    with pytest.raises(models.ModelError, match="its weights lack"):  # and the check still sees what they hold
        pipeline.prepare_model("mine", _with_local(paper_config, "mine", mine), tmp_path / "models/mine", root=ROOT)


def test_a_model_whose_weights_lack_tensors_does_not_load(tmp_path, paper_config, smol_tokenizer):
    """A folder changed after its preparation: every inference job loads it, and none runs a partly random model."""
    mine = tmp_path / "mine"
    _save_tiny(mine, smol_tokenizer)
    config = _with_local(paper_config, "mine", mine)
    pipeline.prepare_model("mine", config, tmp_path / "models/mine", root=ROOT)
    _set_layers(mine, 3)
    with pytest.raises(models.ModelError, match=r"models.mine: .* does not hold together: its weights lack"):
        models.load(tmp_path / "models/mine", "float32", "cpu")


def test_a_local_base_model_needs_a_chat_template_which_the_entry_can_give(tmp_path, paper_config, smol_tokenizer):
    mine = tmp_path / "base"
    build_tiny("llama", vocab_size=len(smol_tokenizer)).save_pretrained(mine)
    base = copy.deepcopy(smol_tokenizer)
    base.chat_template = None
    base.save_pretrained(mine)
    before = sorted(p.name for p in mine.iterdir())
    entry = {"kind": "local", "path": str(mine), "gpus": 0}
    with pytest.raises(models.ModelError, match="models.base: the tokenizer has no chat template"):
        pipeline.prepare_model("base", _synthetic(paper_config, base=entry), tmp_path / "models/base", root=ROOT)
    assert not (tmp_path / "models/base").exists()
    config = _synthetic(paper_config, base={**entry, "chat_template": "llama3"})
    pipeline.prepare_model("base", config, tmp_path / "models/base", root=ROOT)
    _, tokenizer = models.load(tmp_path / "models/base", "float32", "cpu")
    assert tokenizer.chat_template == (ROOT / "data/chat_templates/llama3.jinja").read_text()
    assert sorted(p.name for p in mine.iterdir()) == before  # the user's folder is left alone


def test_a_chat_template_without_roles_stops_at_preparation(tmp_path, paper_config, smol_tokenizer):
    mine = tmp_path / "roleless"
    build_tiny("llama", vocab_size=len(smol_tokenizer)).save_pretrained(mine)
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n\n{% endfor %}"
    tokenizer.save_pretrained(mine)
    assert models.marks_roles(smol_tokenizer)
    config = _with_local(paper_config, "roleless", mine)
    with pytest.raises(models.ModelError, match="models.roleless: the chat template does not mark where the user's"):
        pipeline.prepare_model("roleless", config, tmp_path / "models/roleless", root=ROOT)


def test_an_architecture_the_hooks_cannot_reach_stops_at_preparation(tmp_path, paper_config, smol_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    mine = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(smol_tokenizer))).save_pretrained(mine)
    smol_tokenizer.save_pretrained(mine)
    config = _with_local(paper_config, "gpt2x", mine)
    with pytest.raises(models.ModelError, match="models.gpt2x: this model cannot be run: cannot find the decoder layers"):
        pipeline.prepare_model("gpt2x", config, tmp_path / "models/gpt2x", root=ROOT)


def test_a_model_folder_not_made_by_the_workflow_points_to_a_local_entry(tmp_path):
    (tmp_path / "copied").mkdir()
    with pytest.raises(models.ModelError, match="has no dropnoise_model.json.*`kind: local` entry"):
        models.read_marker(tmp_path / "copied")


def test_a_jobs_log_gets_transformers_warnings_and_the_error_that_stopped_it(tmp_path):
    import subprocess
    import sys

    code = ("from dropnoise import pipeline, prompts; pipeline.setup_logging('job.log'); pipeline.log.info('started'); "
            "import transformers; transformers.utils.logging.get_logger('transformers.modeling_utils').warning('odd'); "
            "raise prompts.PromptError('template.yaml: no turn asks the question')")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0
    text = (tmp_path / "job.log").read_text()
    assert "started" in text and "odd" in text
    assert "job failed" in text and "Traceback" in text and "PromptError: template.yaml: no turn asks" in text
    assert run.stderr.count("no turn asks") == 1  # once on stderr too, not twice


def test_nested_multimodal_layers_are_found():
    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.language_model = Inner()
            self.config = type("C", (), {"text_config": type("T", (), {"num_hidden_layers": 3})()})()

    assert len(models.decoder_layers(Wrapper())) == 3


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "result.csv"
    outputs.write_csv(pd.DataFrame({"a": [1]}), target)

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_csv(pd.DataFrame({"a": [2]}), target)
    assert pd.read_csv(target).a.tolist() == [1]  # the old complete file, never a partial one
    assert [p.name for p in tmp_path.iterdir()] == ["result.csv"]


@pytest.mark.parametrize("umask,file_mode,folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_results_figures_and_folders_get_the_umasks_permissions(tmp_path, umask, file_mode, folder_mode):
    """tempfile's names are private (0600, 0700); a group sharing the project must still read results."""
    from dropnoise import style

    before = os.umask(umask)
    try:
        outputs.write_csv(pd.DataFrame({"a": [1]}), tmp_path / "r.csv")
        fig, _ = style.figure()
        style.save(fig, tmp_path / "f")
        with outputs.staged_folder(tmp_path / "model") as folder:
            (folder / "config.json").write_text("{}")
    finally:
        os.umask(before)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"r.csv": file_mode, "f.pdf": file_mode, "f.png": file_mode, "model": folder_mode}


def test_what_a_killed_job_left_under_an_outputs_temporary_names_is_removed(tmp_path):
    (tmp_path / ".model.0123abcd").mkdir()  # a staging folder of a job killed outright
    (tmp_path / ".model.0123abcd" / "model.safetensors").write_text("half")
    (tmp_path / ".r.csv.89abcdef.tmp").write_text("half")
    kept = [".model.partial", ".model.v2.0123abcd", ".rx.csv.89abcdef.tmp"]  # a download to resume; other outputs'
    for name in kept:
        (tmp_path / name).mkdir()
    with outputs.staged_folder(tmp_path / "model") as folder:
        (folder / "config.json").write_text("{}")
    outputs.write_csv(pd.DataFrame({"a": [1]}), tmp_path / "r.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "model", "r.csv"])


def test_a_staged_folder_is_complete_or_absent_and_a_resumable_one_continues(tmp_path):
    def stopped(folder, resume):
        with pytest.raises(KeyboardInterrupt):
            with outputs.staged_folder(folder, resume) as tmp:
                (tmp / "shard-1.safetensors").write_text("done")
                raise KeyboardInterrupt  # stopped halfway

    for resume in (None, "repo@abc"):
        folder = tmp_path / f"model-{resume is None}"
        stopped(folder, resume)
        assert not folder.exists()
        left = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{folder.name}")]
        assert left == ([] if resume is None else [f".{folder.name}.partial"])
        with outputs.staged_folder(folder, resume) as tmp:
            assert (tmp / "shard-1.safetensors").exists() == (resume is not None)  # the next attempt continues it
            (tmp / "shard-2.safetensors").write_text("done")
        assert sorted(p.name for p in folder.iterdir()) == ["shard-1.safetensors", "shard-2.safetensors"][resume is None:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-False", "model-True"]
    other = tmp_path / "other"
    stopped(other, "repo@abc")
    with outputs.staged_folder(other, "repo@def") as tmp:  # another revision: nothing of the old one is kept
        assert list(tmp.iterdir()) == [tmp / outputs.STAGE_STAMP]


@pytest.fixture(scope="module")
def localization_trials(smol_tokenizer):
    template = prompts.load_template(ROOT / "data/prompts/localization.yaml", tasks.PLACEHOLDERS["localization"])
    grammar = sentences.Grammar(ROOT / "data/synthetic_grammar.yaml")
    pool = sentences.bucket(grammar.sentences(seed=3), smol_tokenizer, [7, 15], 10, 20_000)
    return tasks.localization_trials(smol_tokenizer, template, pool, [7, 15], 3, seed=3)


def test_results_do_not_depend_on_batch_size(localization_trials, smol_tokenizer):
    model = build_tiny("olmo3", vocab_size=len(smol_tokenizer))
    conditions = [{"target": "dropout", "dropout": 0.0}, {"target": "dropout", "dropout": 0.5},
                  {"target": "noise", "noise": 2.0}]
    runs = [
        pd.DataFrame(engine.run(model, smol_tokenizer, localization_trials, conditions, ("A", "B"), seed=1,
                                batch_size=size, progress=False))
        for size in (1, 4)
    ]
    for column in ("logit_A", "logit_B", "entropy"):
        assert runs[0][column].to_numpy() == pytest.approx(runs[1][column].to_numpy(), abs=1e-4)
    assert (runs[0].pred_primary == runs[1].pred_primary).all()
    clean = runs[0][runs[0].strength == 0].logit_A.to_numpy()
    assert not (runs[0][runs[0].perturbation == "noise"].logit_A.to_numpy() == clean).all()


def test_trials_are_balanced_and_vary(localization_trials):
    frame = pd.DataFrame(localization_trials)
    assert set(frame.target) == {"A", "B"} and (frame.answer == frame.target).all()
    assert frame.template_variant.nunique() > 1
    assert frame.groupby("sentence_tokens").size().to_dict() == {7: 3, 15: 3}


def test_control_trials_ask_about_one_topic_and_perturb_independently(smol_tokenizer):
    template = prompts.load_template(
        ROOT / "data/prompts/localization_control.yaml", tasks.PLACEHOLDERS["localization_control"]
    )
    trials = pd.DataFrame(tasks.control_trials(smol_tokenizer, template, 20, seed=2))
    assert trials.groupby("topic_pair").size().to_dict() == dict.fromkeys(template.extra["topic_pairs"], 20)
    for trial in trials.itertuples():
        groups = template.extra["topic_pairs"][trial.topic_pair]
        shown = trial.text.split(f"Sentence {trial.answer}: ")[1]
        assert any(shown.startswith(s) for s in groups[trial.question_group]["sentences"])
        other = "B" if trial.target == "A" else "A"  # the unperturbed sentence is recorded too (its cluster)
        topic, number = trial.other_sentence_id.rsplit("-", 1)
        assert trial.text.split(f"Sentence {other}: ")[1].startswith(groups[topic]["sentences"][int(number)])
        assert topic != trial.sentence_id.rsplit("-", 1)[0] and topic in groups
        # The paper's wording: the topic asked about is named before the sentences and in the question, and the
        # prompt never says that anything will be perturbed (it tests comprehension, not detection).
        asked = groups[trial.question_group]["topic"]
        assert trial.text.split("Sentence A: ")[0].count(asked) == 1 and f"is {asked}?" in trial.text
        assert "perturb" not in trial.text.lower()
    assert (trials.answer != trials.target).any() and (trials.answer == trials.target).any()
    first = next(iter(template.extra["topic_pairs"]["animals_cities"].values()))
    first["question"] = first.pop("topic")  # a template of the old layout
    with pytest.raises(prompts.PromptError, match="topic_pairs.animals_cities.animals needs `sentences` and `topic`"):
        tasks.control_trials(smol_tokenizer, template, 2, seed=2)


def test_wikitext_source_says_what_to_do_when_unreachable(monkeypatch):
    import sys
    import types

    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to the datasets hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=unreachable))
    with pytest.raises(sentences.SentenceError, match="unreachable.*source: synthetic"):
        next(sentences.candidates({"source": "wikitext"}, 0, ROOT / "data/synthetic_grammar.yaml"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed: say which package, not "unreachable"
    with pytest.raises(sentences.SentenceError, match=r"needs the `datasets` package: `pip install -e '\.\[wikitext\]'`"):
        next(sentences.candidates({"source": "wikitext"}, 0, ROOT / "data/synthetic_grammar.yaml"))


def test_hf_downloads_take_the_transformers_files_only():
    from huggingface_hub.utils import filter_repo_objects

    mistral = ["config.json", "consolidated.safetensors", "model-00001-of-00003.safetensors", "params.json",
               "model.safetensors.index.json", "tokenizer.model.v3", "tokenizer.json", "tokenizer_config.json",
               "generation_config.json", "original/consolidated.00.pth", "original/tokenizer.model", "README.md"]
    kept = set(filter_repo_objects(mistral, allow_patterns=models.HF_FILES, ignore_patterns=models.HF_SKIPPED))
    assert kept == {"config.json", "model-00001-of-00003.safetensors", "params.json", "model.safetensors.index.json",
                    "tokenizer.model.v3", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}


def test_a_wikitext_source_without_datasets_stops_before_the_model_download(monkeypatch, tmp_path, paper_config):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.setattr(models, "prepare_hf", lambda *args: pytest.fail("the model download started"))
    assert paper_config["sentences"]["source"] == "wikitext"
    with pytest.raises(sentences.SentenceError, match="needs the `datasets` package"):
        pipeline.prepare_model("llama8b", paper_config, tmp_path / "llama8b")
    assert not (tmp_path / "llama8b").exists()
    synthetic = {**paper_config, "sentences": {**paper_config["sentences"], "source": "synthetic"}}
    called = []
    monkeypatch.setattr(models, "prepare_hf", lambda *args: called.append(args))
    monkeypatch.setattr(models, "adopt", lambda *args: None)
    pipeline.prepare_model("llama8b", synthetic, tmp_path / "llama8b")  # nothing to check: on to the download
    assert called


def test_a_gpu_job_without_a_visible_gpu_fails_fast(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("INFO"):
        models.check_device("cpu-model", 0, "auto")  # no GPU requested: fine
    assert "cuda available: False" in caplog.text
    with pytest.raises(models.ModelError, match="asks for 2 GPU"):
        models.check_device("qwen32b", 2, "auto")
    models.check_device("qwen32b", 2, "cpu")  # CPU on purpose


def test_cpu_only_steps_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, dropnoise.pipeline, dropnoise.summary, dropnoise.operating_range; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # they run in the analysis env, which has no torch


def test_strength_zero_rows_are_the_unhooked_model(localization_trials, smol_tokenizer):
    model = build_tiny("gemma3", vocab_size=len(smol_tokenizer))
    conditions = [{"target": "dropout", "dropout": 0.0}, {"target": "noise", "noise": 0.0}]
    rows = pd.DataFrame(engine.run(model, smol_tokenizer, localization_trials, conditions, ("A", "B"), seed=1,
                                   batch_size=3, progress=False))
    a_id = prompts.option_tokens(smol_tokenizer, ("A", "B"))["A"]["primary"]
    with torch.inference_mode():
        for trial in localization_trials[:3]:
            ids, _ = prompts.tokenize(smol_tokenizer, trial["text"])
            plain = model(input_ids=torch.tensor([ids])).logits[0, -1, a_id].item()
            for kind in ("dropout", "noise"):
                row = rows[(rows.trial_id == trial["trial_id"]) & (rows.perturbation == kind)]
                assert row.logit_A.item() == pytest.approx(plain, abs=1e-4)


def test_renderings_of_one_base_trial_share_their_draws():
    trial = {"trial_id": 7, "base_id": "k1-3", "spans": [{"start": 2, "end": 5, "kind": "none", "test": False},
                                                          {"start": 9, "end": 12, "kind": "noise", "test": True}]}
    other = {**trial, "trial_id": 99, "spans": [{**trial["spans"][0], "kind": "dropout"}, trial["spans"][1]]}
    a = engine.trial_perturbation(trial, {"dropout": 0.3, "noise": 1.0}, seed=5)
    b = engine.trial_perturbation(other, {"dropout": 0.3, "noise": 1.0}, seed=5)
    assert a.seed == b.seed and len(a.spans) == len(b.spans) == 2  # the test span keeps draw index 1
    assert a.spans[0].is_noop and not b.spans[0].is_noop


def test_checkpoint_sharding_problems_name_the_dynamics_settings_once(paper_config):
    from dropnoise import checkpoints

    config = copy.deepcopy(paper_config)
    config["dynamics"]["localization"]["shards"] = 200  # every checkpoint inherits shard_by: trials
    config["models"] = checkpoints.expand(config)
    assert sum("checkpoint_of" in entry for entry in config["models"].values()) > 1
    with pytest.raises(dnconfig.ConfigError) as err:
        dnconfig.check(config, root=ROOT)
    assert str(err.value).count("dynamics.localization.shards: 200 shards by trials but only 100") == 1
    assert "step" not in str(err.value)


def test_cost_counts_a_trials_prefix_once_per_job(paper_config):
    from dropnoise import cost

    by_conditions = cost.passes(paper_config, "llama8b", "few_shot", "conditions")
    by_trials = cost.passes(paper_config, "llama8b", "few_shot")  # config.yaml shards few-shot by trials
    assert by_trials == cost.passes(paper_config, "llama8b", "few_shot", "trials")
    trials = 5 * 2 * 8 * 1000  # k x label conditions x aliases x samples
    assert by_conditions["trials"] == by_trials["trials"] == trials
    assert by_conditions["passes"] == by_trials["passes"] == trials * 121  # the same rows either way
    assert by_trials["prefix_runs"] == trials and by_conditions["prefix_runs"] == trials * 121
