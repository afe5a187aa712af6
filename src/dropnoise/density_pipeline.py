"""One function per step of the data-density analysis (workflow/rules/density.smk); the scripts only pass
Snakemake's inputs, outputs and params here.

corpus (reference sentences) -> features (embeddings, clean NLL; loads the model) -> density.csv per model
-> density_dependence.csv and the source contrast over every model and experiment -> figures.
torch is imported only by the features step, so the others run in the light density env; matplotlib and seaborn
only by the figures step, so the corpus and features steps run in the inference env.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from . import density, density_dependence, outputs, sentences
from .pipeline import read_trials
from .vocabulary import derive_seed

log = logging.getLogger("dropnoise")


def build_corpus(config: dict, sentence_file: str, out: str, root: str | Path = ".") -> None:
    settings = config["density"]
    source = sentences.corpus_source(config)
    targets = pd.read_csv(sentence_file, keep_default_na=False).sentence
    seed = derive_seed(settings["seed"], "reference corpus")
    candidates = sentences.candidates(source, seed, Path(root) / source.get("grammar", "data/synthetic_grammar.yaml"))
    corpus = density.reference_corpus(candidates, targets, settings["corpus"]["size"],
                                      settings["corpus"]["max_candidates"])
    if len(corpus) < settings["corpus"]["size"]:
        log.warning("reference corpus: %d sentences, fewer than size=%d", len(corpus), settings["corpus"]["size"])
    log.info("reference corpus: %d sentences from source '%s', %d targets left out", len(corpus), source["source"],
             len(targets))
    outputs.write_csv(pd.DataFrame({"source": source["source"], "sentence": corpus}), out)


def build_features(model_key: str, model_dir: str, config: dict, sentence_file: str, corpus_file: str, out: str,
                   threads: int | None = None) -> None:
    """Target and reference embeddings (by the configured encoder) and the model's clean NLL on each target."""
    from .pipeline import hub_offline

    hub_offline()
    import torch

    from . import models, sentence_encoders

    if threads:
        torch.set_num_threads(threads)
    settings = config["density"]
    entry = config["models"][model_key]
    models.check_device(model_key, entry.get("gpus", 0), config["inference"]["device"])
    targets = pd.read_csv(sentence_file, keep_default_na=False)
    reference = pd.read_csv(corpus_file, keep_default_na=False).sentence.tolist()
    model, tokenizer = models.load(model_dir, entry.get("dtype", "auto"), config["inference"]["device"])
    batch = settings["batch_size"]
    nll, scored, pooled = sentence_encoders.lm_features(model, tokenizer, targets.sentence.tolist(), batch)
    if settings["encoder"] == "model":
        target_embeddings = pooled
        reference_embeddings = sentence_encoders.lm_features(model, tokenizer, reference, batch)[2]
    else:
        device = str(next(model.parameters()).device)
        target_embeddings = sentence_encoders.minilm_embeddings(targets.sentence.tolist(), batch, device)
        reference_embeddings = sentence_encoders.minilm_embeddings(reference, batch, device)
    log.info("%s: %d targets, %d reference sentences, encoder %s (%d dimensions)", model_key, len(targets),
             len(reference), settings["encoder"], target_embeddings.shape[1])
    with outputs.atomic_path(out, ".npz") as tmp:
        np.savez(tmp, sentence_id=targets.sentence_id.to_numpy(dtype=str), clean_nll=nll, n_scored_tokens=scored,
                 targets=target_embeddings, reference=reference_embeddings)


def build_density(config: dict, sentence_file: str, features_file: str, out_csv: str, out_json: str) -> None:
    settings = config["density"]
    pool = pd.read_csv(sentence_file, keep_default_na=False)
    features = np.load(features_file)
    if not (features["sentence_id"] == pool.sentence_id.to_numpy(dtype=str)).all():
        raise density.DensityError(f"{features_file} is not for the sentence pool {sentence_file}")
    targets = pool[["sentence_id", "source", "sentence_tokens"]].assign(
        clean_nll=features["clean_nll"], n_scored_tokens=features["n_scored_tokens"])
    bandwidth = settings["bandwidth"]
    table, facts = density.density_table(targets, features["targets"], features["reference"], bandwidth["k"],
                                         bandwidth["scales"], bandwidth["sample"], settings["seed"])
    log.info("bandwidth h = %.4g (median distance to the %d-th neighbour); log density: %s", facts["bandwidth"],
             bandwidth["k"], table.log_density.describe().to_dict())
    for scale, neighbours in facts["median_effective_neighbours"].items():
        wide = neighbours > facts["n_reference"] / 2
        (log.warning if wide else log.info)(
            "h x %s: a median %.0f of %d reference sentences weigh in each density%s", scale, neighbours,
            facts["n_reference"], " (more than half: this scale measures typicality, not local density)" if wide else "")
    outputs.write_csv(table, out_csv)
    outputs.write_json({**facts, "encoder": settings["encoder"], "corpus": sentences.corpus_source(config)}, out_json)


def read_densities(models: list[str], density_files: list[str]) -> dict[str, pd.DataFrame]:
    """model -> its results/{model}/density.csv."""
    return {model: pd.read_csv(path, keep_default_na=False) for model, path in zip(models, density_files)}


def joined_tables(models: list[str], experiments: list[str], trial_files: list[str],
                  densities: dict[str, pd.DataFrame], rule: str) -> dict[tuple[str, str], pd.DataFrame]:
    """(model, experiment) -> per-trial rows joined with their sentences' densities. `trial_files` are ordered
    model-major, as `density_dependence_inputs` in common.smk lists them. Only the columns the analysis reads are
    loaded (`density_dependence.reads`)."""
    tables = {}
    for i, model in enumerate(models):
        for j, experiment in enumerate(experiments):
            trials = read_trials(trial_files[i * len(experiments) + j], density_dependence.reads(rule))
            tables[model, experiment] = density_dependence.join(trials, densities[model], rule)
    return tables


def build_dependence(models, experiments, trial_files, density_files, config: dict, out: str,
                     out_contrast: str, out_nll: str) -> None:
    settings = config["density"]
    densities = read_densities(models, density_files)
    nll = density_dependence.density_and_nll(densities, settings["bandwidth"]["scales"], settings["permutations"],
                                             settings["seed"])
    log.info("clean NLL on density:\n%s", nll.drop(columns="formula").to_string(index=False))
    outputs.write_csv(nll, out_nll)
    tables = joined_tables(models, experiments, trial_files, densities, settings["rule"])
    result = density_dependence.density_dependence(tables, settings["bandwidth"]["scales"], settings["rule"],
                                                   settings["permutations"], settings["seed"],
                                                   config["stats"]["correction"])
    log.info("density dependence:\n%s", result.drop(columns="formula").to_string(index=False))
    outputs.write_csv(result, out)
    outputs.write_csv(density_dependence.source_contrast(tables), out_contrast)


def build_figures(models, experiments, trial_files, density_files, dependence_file: str, config: dict,
                  deciles_stem: str, forest_stem: str) -> None:
    from . import density_figures, style

    tables = joined_tables(models, experiments, trial_files, read_densities(models, density_files),
                           config["density"]["rule"])
    style.save(density_figures.deciles_figure(tables), deciles_stem)
    style.save(density_figures.forest_figure(pd.read_csv(dependence_file)), forest_stem)
