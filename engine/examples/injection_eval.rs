//! Measures the prompt-injection classifier compiled into the engine on the
//! corpus `engine/injection/build_corpus.py` writes: precision, recall, F1
//! and balanced accuracy on the held-out test split (and, for reference, the
//! validation split the threshold was picked on), overall and per source.
//! With a third argument, also the external set `build_external.py` writes:
//! packages never trained or tuned on. Writes `engine/injection/EVALUATION.md`.
//!
//! cargo run --release -p policybind-engine --example injection_eval -- \
//!     engine/injection/corpus.jsonl engine/injection/EVALUATION.md \
//!     engine/injection/external.jsonl

use std::collections::BTreeMap;
use std::fmt::Write;

use policybind_engine::injection;

#[derive(Default, Clone, Copy)]
struct Counts {
    tp: usize,
    fp: usize,
    fn_: usize,
    tn: usize,
}

impl Counts {
    fn add(&mut self, flagged: bool, attack: bool) {
        match (flagged, attack) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, true) => self.fn_ += 1,
            (false, false) => self.tn += 1,
        }
    }

    fn ratio(a: usize, b: usize) -> f64 {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    }

    fn precision(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fp)
    }

    fn recall(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fn_)
    }

    fn false_positive_rate(&self) -> f64 {
        Self::ratio(self.fp, self.fp + self.tn)
    }

    fn f1(&self) -> f64 {
        Self::ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    fn balanced_accuracy(&self) -> f64 {
        (self.recall() + (1.0 - self.false_positive_rate())) / 2.0
    }
}

fn pct(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else {
        format!("{:.1}%", 100.0 * x)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let corpus = args
        .get(1)
        .map_or("engine/injection/corpus.jsonl", String::as_str);
    let out = args
        .get(2)
        .map_or("engine/injection/EVALUATION.md", String::as_str);
    let external = args.get(3);
    let model = injection::builtin();
    let mut overall: BTreeMap<String, Counts> = BTreeMap::new();
    let mut by_source: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for row in rows(corpus) {
        if row.split == "train" {
            continue;
        }
        let flagged = model.detect(&row.text).is_some();
        overall
            .entry(row.split.clone())
            .or_default()
            .add(flagged, row.attack);
        by_source
            .entry((row.split, row.source))
            .or_default()
            .add(flagged, row.attack);
    }
    let mut report = String::new();
    render(&mut report, &overall, &by_source, model.threshold);
    if let Some(external) = external {
        render_external(&mut report, model, &rows(external));
    }
    std::fs::write(out, &report).expect("write the report");
    print!("{report}");
}

/// One labelled text of a corpus file.
struct Row {
    text: String,
    attack: bool,
    source: String,
    split: String,
    /// A near-duplicate of a training text (external set only).
    near_train: bool,
}

fn rows(path: &str) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).expect("corpus line");
            let field = |name: &str| row[name].as_str().expect(name).to_owned();
            Row {
                text: field("text"),
                attack: row["label"].as_i64() == Some(1),
                source: field("source"),
                split: field("split"),
                near_train: row["near_train"].as_bool() == Some(true),
            }
        })
        .collect()
}

/// The external set (`build_external.py`): sources never trained or tuned on.
fn render_external(report: &mut String, model: &injection::Model, rows: &[Row]) {
    let mut all = Counts::default();
    let mut unseen = Counts::default();
    let mut by_source: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for row in rows {
        let flagged = model.detect(&row.text).is_some();
        all.add(flagged, row.attack);
        if !row.near_train {
            unseen.add(flagged, row.attack);
        }
        by_source
            .entry(("external".to_owned(), row.source.clone()))
            .or_default()
            .add(flagged, row.attack);
    }
    let _ = writeln!(
        report,
        "\n## External sources (never trained or tuned on)\n\n\
         Texts from packages the classifier never saw (`build_external.py`: raginject,\n\
         hermes-jailbench, dual-llm-bench), scored once with the model and threshold\n\
         above. \"without near-duplicates\" leaves out texts that nearly duplicate a\n\
         training text (word 5-gram Jaccard >= 0.4).\n\n\
         | set | texts | attacks | precision | recall | F1 | balanced accuracy | false positive rate |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for (name, c) in [("all", all), ("without near-duplicates", unseen)] {
        let _ = writeln!(
            report,
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            c.tp + c.fp + c.fn_ + c.tn,
            c.tp + c.fn_,
            pct(c.precision()),
            pct(c.recall()),
            pct(c.f1()),
            pct(c.balanced_accuracy()),
            pct(c.false_positive_rate()),
        );
    }
    render_sources(report, &by_source, "external");
}

fn render(
    report: &mut String,
    overall: &BTreeMap<String, Counts>,
    by_source: &BTreeMap<(String, String), Counts>,
    threshold: f32,
) {
    let _ = writeln!(
        report,
        "# Prompt-injection classifier: evaluation\n\n\
         Generated by `engine/injection/reproduce.sh` (the `injection_eval` example) for the\n\
         model compiled into the engine (threshold logit {threshold:.3}). The test split was\n\
         never used to fit or tune; the threshold was picked on the validation split.\n\
         Splits are by group (near-duplicates and every text built from one attack template\n\
         share a split); see `build_corpus.py`.\n\n\
         | split | texts | attacks | precision | recall | F1 | balanced accuracy | false positive rate |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for split in ["test", "validation"] {
        let Some(c) = overall.get(split) else {
            continue;
        };
        let _ = writeln!(
            report,
            "| {split} | {} | {} | {} | {} | {} | {} | {} |",
            c.tp + c.fp + c.fn_ + c.tn,
            c.tp + c.fn_,
            pct(c.precision()),
            pct(c.recall()),
            pct(c.f1()),
            pct(c.balanced_accuracy()),
            pct(c.false_positive_rate()),
        );
    }
    // Benign texts written to look like attacks, where a bag of words is
    // weakest: the hand-written look-alikes, bastioncorpus's false-positive
    // traps, instruction prompts and agent tasks.
    let _ = writeln!(
        report,
        "\n## Benign look-alikes\n\n\
         | split | look-alikes | flagged (false positive rate) |\n|---|---|---|"
    );
    for split in ["test", "validation"] {
        let mut hard = Counts::default();
        for ((s, source), c) in by_source {
            if s == split && LOOKALIKE_SOURCES.contains(&source.as_str()) {
                hard.fp += c.fp;
                hard.tn += c.tn;
            }
        }
        let _ = writeln!(
            report,
            "| {split} | {} | {} ({}) |",
            hard.fp + hard.tn,
            hard.fp,
            pct(hard.false_positive_rate())
        );
    }
    for split in ["test", "validation"] {
        render_sources(report, by_source, split);
    }
}

/// Sources of benign texts that resemble attacks.
const LOOKALIKE_SOURCES: &[&str] = &[
    "lookalikes",
    "bastioncorpus",
    "promptinject:playground",
    "agent-injection-bench:tasks",
    "spikee:standalone-fp",
];

fn render_sources(
    report: &mut String,
    by_source: &BTreeMap<(String, String), Counts>,
    wanted: &str,
) {
    let _ = writeln!(
        report,
        "\n## {wanted} split by source\n\n\
         Attack sources: recall (attacks flagged). Benign sources: false positive rate\n\
         (benign texts flagged).\n\n\
         | source | texts | attacks flagged | benign flagged |\n|---|---|---|---|"
    );
    for ((split, source), c) in by_source {
        if split != wanted {
            continue;
        }
        let attacks = c.tp + c.fn_;
        let benign = c.fp + c.tn;
        let cell = |hit: usize, of: usize| {
            if of == 0 {
                "-".to_owned()
            } else {
                format!("{hit}/{of} ({})", pct(hit as f64 / of as f64))
            }
        };
        let _ = writeln!(
            report,
            "| {source} | {} | {} | {} |",
            attacks + benign,
            cell(c.tp, attacks),
            cell(c.fp, benign)
        );
    }
}
