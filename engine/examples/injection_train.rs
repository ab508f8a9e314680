//! Trains the prompt-injection classifier (`engine/src/injection.rs`) on the
//! corpus `engine/injection/build_corpus.py` writes, and writes the model
//! compiled into the engine. Uses the train split to fit and the validation
//! split to pick the decision threshold; never reads the test split.
//!
//! Deterministic: the same corpus gives the same model, byte for byte.
//!
//! cargo run --release -p policybind-engine --example injection_train -- \
//!     engine/injection/corpus.jsonl engine/data/prompt-injection.model

use policybind_engine::injection::{Featurized, Model, featurize};

/// Hashed feature space: 2^18 buckets, 256 KiB of i8 weights.
const BITS: u32 = 18;
const EPOCHS: usize = 12;
const LEARNING_RATE: f32 = 0.2;
const L2: f32 = 1e-6;

struct Example {
    text: Featurized,
    label: f32,
    split: String,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let corpus = args
        .get(1)
        .map_or("engine/injection/corpus.jsonl", String::as_str);
    let out = args
        .get(2)
        .map_or("engine/data/prompt-injection.model", String::as_str);
    let examples = load(corpus);
    let train: Vec<&Example> = examples.iter().filter(|e| e.split == "train").collect();
    let validation: Vec<&Example> = examples
        .iter()
        .filter(|e| e.split == "validation")
        .collect();
    eprintln!(
        "{} train, {} validation examples",
        train.len(),
        validation.len()
    );
    let mut model = fit(&train);
    let (threshold, f1) = pick_threshold(&model, &validation);
    model.threshold = threshold;
    // What ships is the quantised model: judge that one.
    let shipped = Model::from_bytes(&model.to_bytes()).expect("round trip");
    let (tp, fp, fn_, tn) = confusion(&shipped, &validation);
    eprintln!(
        "validation at threshold {threshold:.3}: F1 {f1:.3}; tp {tp} fp {fp} fn {fn_} tn {tn}"
    );
    std::fs::write(out, shipped.to_bytes()).expect("write the model");
    eprintln!("wrote {out}");
}

fn load(path: &str) -> Vec<Example> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).expect("corpus line");
            Example {
                text: featurize(row["text"].as_str().expect("text"), BITS),
                label: row["label"].as_f64().expect("label") as f32,
                split: row["split"].as_str().expect("split").to_owned(),
            }
        })
        .collect()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Logistic regression over each text's best window (multiple-instance
/// learning: a text is an attack if one of its passages is), trained with
/// AdaGrad. Each step updates the features of the window the model now
/// scores highest, so training judges texts exactly as the detector does.
fn fit(train: &[&Example]) -> Model {
    let mut model = Model {
        bits: BITS,
        bias: 0.0,
        threshold: 0.0,
        weights: vec![0.0; 1 << BITS],
    };
    let mut squared = vec![1e-8f32; 1 << BITS];
    let mut bias_squared = 1e-8f32;
    let positives = train.iter().filter(|e| e.label > 0.5).count().max(1) as f32;
    let positive_weight = (train.len() as f32 - positives) / positives;
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = SplitMix(0x1_2345);
    let mut gradient: Vec<(u32, f32)> = Vec::new();
    for epoch in 0..EPOCHS {
        shuffle(&mut order, &mut rng);
        let mut loss = 0.0;
        for &i in &order {
            let example = train[i];
            let Some((logit, (start, end))) = model.best_window(&example.text) else {
                continue;
            };
            let p = sigmoid(logit);
            let weight = if example.label > 0.5 {
                positive_weight
            } else {
                1.0
            };
            loss += weight
                * -(example.label * p.max(1e-7).ln()
                    + (1.0 - example.label) * (1.0 - p).max(1e-7).ln());
            let g = weight * (p - example.label);
            gradient.clear();
            let features = Model::window_features(&example.text, (start, end));
            let scale = (features.len().max(1) as f32).sqrt();
            gradient.extend(features.into_iter().map(|f| (f, g / scale)));
            for &(f, g) in &gradient {
                let f = f as usize;
                let g = g + L2 * model.weights[f];
                squared[f] += g * g;
                model.weights[f] -= LEARNING_RATE * g / squared[f].sqrt();
            }
            bias_squared += g * g;
            model.bias -= LEARNING_RATE * g / bias_squared.sqrt();
        }
        eprintln!("epoch {epoch}: loss {:.4}", loss / train.len() as f32);
    }
    model
}

/// The threshold with the best F1 on the validation split.
fn pick_threshold(model: &Model, validation: &[&Example]) -> (f32, f32) {
    let mut scored: Vec<(f32, bool)> = validation
        .iter()
        .filter_map(|e| Some((model.best_window(&e.text)?.0, e.label > 0.5)))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let positives = scored.iter().filter(|s| s.1).count() as f32;
    let (mut tp, mut fp) = (0f32, 0f32);
    let mut best = (f32::INFINITY, 0f32);
    for (i, &(logit, positive)) in scored.iter().enumerate() {
        if positive {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let next_differs = scored.get(i + 1).is_none_or(|n| n.0 < logit);
        let f1 = 2.0 * tp / (2.0 * tp + fp + (positives - tp));
        if next_differs && f1 > best.1 {
            // Half-way to the next score, so the threshold is not on an example.
            let below = scored.get(i + 1).map_or(logit - 1.0, |n| n.0);
            best = ((logit + below) / 2.0, f1);
        }
    }
    best
}

fn confusion(model: &Model, examples: &[&Example]) -> (usize, usize, usize, usize) {
    let (mut tp, mut fp, mut fn_, mut tn) = (0, 0, 0, 0);
    for e in examples {
        let flagged = model
            .best_window(&e.text)
            .is_some_and(|(logit, _)| logit >= model.threshold);
        match (flagged, e.label > 0.5) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => tn += 1,
        }
    }
    (tp, fp, fn_, tn)
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn shuffle(items: &mut [usize], rng: &mut SplitMix) {
    for i in (1..items.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
