#!/usr/bin/env bash
# Install this checkout's library into the env (no dependencies: the env file pins them).
# Snakemake runs this once, right after creating the env, from the workflow's working directory.
set -euo pipefail
python -m pip install --no-deps -e .
