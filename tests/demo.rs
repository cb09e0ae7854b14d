//! The shipped demo bundle (`models/demo`, trained by `models/train_demo.py`)
//! against what Hugging Face transformers did with the same checkpoint
//! (`tests/fixtures/goldens/demo.json`):
//!
//! - on held-out scenes the training never saw, drawn here by the Rust port of
//!   the scene generator (the test-pattern camera's), the Rust pipeline
//!   answers what transformers answers, and so scores what it scores per
//!   question type (the accuracy itself is the model's, see docs/DEMO.md);
//! - on the golden subset, its Q-Former output and greedy tokens are the
//!   reference's;
//! - the Q8_0, Q4_K_M, Q5_K_M, Q4_0 and IQ4_NL quantized bundles (made by
//!   `blipd quantize`) are scored the same way, beside the f32 one, and stay
//!   close to it (3 points for 8 and 5 bits, 6 for 4);
//! - so are the bundles with derived vision and Q-Former precision (int8
//!   vision by models/vision_precision.py, in the project's .venv; int8
//!   vision + int8 Q-Former by `blipd quantize --vision int8 --qformer int8`
//!   and f16 vision by `blipd quantize --vision f16`, which write the same
//!   graphs as the Python tool: models/tests/test_quantize_graph.py): within
//!   1 point of f32 per type, their Q-Former output on the golden subset
//!   close to transformers' f32 one.
//!
//! Run with `--nocapture` to see the accuracy tables.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use blipd::camera::scene::Scene;
use blipd::llm::GenerateParams;
use blipd::{Pipeline, PipelineOptions};
use serde::Deserialize;

const QFORMER_TOL: f32 = 1e-4;

#[derive(Debug, Deserialize)]
struct Case {
    #[serde(rename = "type")]
    qtype: String,
    seed: u64,
    prompt: String,
    answer: String,
    reference_text: String,
    reference_correct: bool,
    #[serde(default)]
    golden: bool,
    #[serde(default)]
    tokens: Vec<u32>,
    #[serde(default)]
    stop: serde_json::Value,
    #[serde(default)]
    qformer: Vec<f32>,
}

#[derive(Debug, Deserialize)]
struct Goldens {
    eval_size: [u32; 2],
    max_new_tokens: usize,
    cases: Vec<Case>,
}

fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")
}

fn goldens() -> Goldens {
    let path = common::fixtures().join("goldens/demo.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `bundle` on 2 threads, and greedy decoding as the goldens were made.
fn load(bundle: &Path, g: &Goldens) -> (Pipeline, GenerateParams) {
    let opts = PipelineOptions::default().with_threads(2);
    let params = GenerateParams {
        max_new_tokens: g.max_new_tokens,
        sampling: None,
        constraint: None,
    };
    (Pipeline::load(bundle, &opts).unwrap(), params)
}

/// Per question type: (right, asked, agreeing with the reference's text).
type Scores = BTreeMap<String, (usize, usize, usize)>;

/// Every held-out case through the pipeline of `bundle`; `check_goldens`
/// also holds the golden subset to the reference's tokens and Q-Former output.
fn score(bundle: &Path, g: &Goldens, check_goldens: bool) -> Scores {
    let (mut p, params) = load(bundle, g);
    let mut scores = Scores::new();
    let mut goldens = 0;
    for case in &g.cases {
        let img = Scene::sample(case.seed).render(g.eval_size[0], g.eval_size[1]);
        let frame = p.image_features(&img).unwrap();
        let a = p.answer(&frame, &case.prompt, &params, |_| {}).unwrap();
        let s = scores.entry(case.qtype.clone()).or_default();
        s.0 += usize::from(a.text.trim() == case.answer);
        s.1 += 1;
        s.2 += usize::from(a.text == case.reference_text);
        if check_goldens && case.golden {
            goldens += 1;
            let prepared = p.prepare(&case.prompt).unwrap();
            let q = p.soft_prompt(&frame.features, &prepared).unwrap();
            let diff = common::max_abs_diff(&q, &case.qformer);
            assert!(
                diff <= QFORMER_TOL,
                "seed {} {:?}: Q-Former differs by {diff}",
                case.seed,
                case.prompt
            );
            assert_eq!(
                serde_json::to_value(a.stop).unwrap(),
                case.stop,
                "seed {}: stop",
                case.seed
            );
            assert_eq!(
                a.tokens, case.tokens,
                "seed {} {:?}: greedy tokens differ from transformers'",
                case.seed, case.prompt
            );
        }
    }
    if check_goldens {
        assert!(goldens >= 12, "the golden subset has {goldens} cases");
    }
    scores
}

fn table(rows: &[(&str, &Scores)]) -> String {
    let mut out = String::from("| question type |");
    for (name, _) in rows {
        out += &format!(" {name} |");
    }
    out += "\n|---|";
    out += &"---|".repeat(rows.len());
    for qtype in rows[0].1.keys() {
        out += &format!("\n| {qtype} |");
        for (_, s) in rows {
            let (right, n, _) = s[qtype];
            out += &format!(" {right}/{n} ({:.1} %) |", 100.0 * right as f64 / n as f64);
        }
    }
    out
}

/// `got` within `points` percentage points of `base`, per question type.
fn assert_close(name: &str, got: &Scores, base: &BTreeMap<String, f64>, points: f64) {
    for (qtype, &(right, n, _)) in got {
        let acc = 100.0 * right as f64 / n as f64;
        let want = base[qtype];
        assert!(
            (acc - want).abs() <= points,
            "{name}: {qtype} {acc:.1} % right, {want:.1} % expected (+-{points})"
        );
    }
}

/// Runs a bundle-deriving command; its stderr is the failure message.
fn run_ok(what: &str, cmd: &mut Command) {
    let st = cmd.output().unwrap();
    assert!(
        st.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// The demo bundle with derived precisions (`--vision int8` ...), made by
/// models/vision_precision.py.
fn derive_precision(out: &Path, args: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: `make venv` sets up the exporter's environment",
        python.display()
    );
    run_ok(
        "models/vision_precision.py",
        Command::new(python)
            .arg(root.join("models/vision_precision.py"))
            .arg(demo_dir())
            .arg(out)
            .args(args),
    );
}

/// On the golden subset: the smallest cosine and largest difference of the
/// Q-Former output against transformers' (f32) one, and how many greedy
/// answers are token-identical.
fn qformer_agreement(bundle: &Path, g: &Goldens) -> (f64, f32, usize, usize) {
    let (mut p, params) = load(bundle, g);
    let (mut cos_min, mut max_abs, mut same, mut n) = (1.0f64, 0.0f32, 0, 0);
    for case in g.cases.iter().filter(|c| c.golden) {
        let img = Scene::sample(case.seed).render(g.eval_size[0], g.eval_size[1]);
        let frame = p.image_features(&img).unwrap();
        let prepared = p.prepare(&case.prompt).unwrap();
        let q = p.soft_prompt(&frame.features, &prepared).unwrap();
        let dot: f64 = q
            .iter()
            .zip(&case.qformer)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        cos_min = cos_min.min(dot / (norm(&q) * norm(&case.qformer)));
        max_abs = max_abs.max(common::max_abs_diff(&q, &case.qformer));
        let a = p.answer(&frame, &case.prompt, &params, |_| {}).unwrap();
        same += usize::from(a.tokens == case.tokens);
        n += 1;
    }
    (cos_min, max_abs, same, n)
}

fn quantize(kind: &str, out: &Path) {
    run_ok(
        &format!("blipd quantize {kind}"),
        Command::new(env!("CARGO_BIN_EXE_blipd"))
            .args(["quantize", "--threads", "2"])
            .arg(demo_dir())
            .arg(out)
            .arg(kind),
    );
}

#[test]
fn demo_bundle_answers_held_out_scenes_like_the_reference() {
    let g = goldens();
    assert!(g.cases.len() >= 600);
    let f32_scores = score(&demo_dir(), &g, true);
    for (qtype, &(_, n, agree)) in &f32_scores {
        // Goldens pin tokens where the reference's margins are safe; on the
        // rest a near tie may go either way, but hardly ever does.
        assert!(
            agree * 100 >= n * 98,
            "{qtype}: only {agree}/{n} answers equal transformers'"
        );
    }
    let (agree, n) = f32_scores
        .values()
        .fold((0, 0), |(a, n), &(_, k, g)| (a + g, n + k));
    eprintln!("blipd f32 answer text equals transformers' on {agree}/{n} cases");
    // What the demo model is for (issue 7): blipd, running the shipped
    // bundle, answers >= 90 % of held-out questions right, per type.
    for (qtype, &(right, n, _)) in &f32_scores {
        assert!(
            right * 100 >= n * 90,
            "{qtype}: {right}/{n} right, below the 90 % the demo model is held to"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let (q8, q4) = (dir.path().join("demo-q8_0"), dir.path().join("demo-q4_k_m"));
    quantize("q8_0", &q8);
    quantize("q4_k_m", &q4);
    let q8_scores = score(&q8, &g, false);
    let q4_scores = score(&q4, &g, false);
    // The other LLM types docs/PERFORMANCE.md times per board.
    let mut llm_types = Vec::new();
    for (kind, bound) in [("q5_k_m", 3.0), ("q4_0", 6.0), ("iq4_nl", 6.0)] {
        let bundle = dir.path().join(format!("demo-{kind}"));
        quantize(kind, &bundle);
        llm_types.push((kind, bound, score(&bundle, &g, false)));
    }
    let mut derived = Vec::new();
    for (label, dir_name, args) in [
        ("int8 vision", "demo-v8", &["--vision", "int8"][..]),
        (
            "int8 vision+qformer",
            "demo-v8-q8",
            &["--vision", "int8", "--qformer", "int8"][..],
        ),
        ("f16 vision", "demo-v16", &["--vision", "f16"][..]),
    ] {
        let bundle = dir.path().join(dir_name);
        if label != "int8 vision" {
            run_ok(
                "blipd quantize --vision/--qformer",
                Command::new(env!("CARGO_BIN_EXE_blipd"))
                    .args(["quantize", "--threads", "2"])
                    .arg(demo_dir())
                    .arg(&bundle)
                    .args(args),
            );
        } else {
            derive_precision(&bundle, args);
        }
        let scores = score(&bundle, &g, false);
        let (cos, max_abs, same, n) = qformer_agreement(&bundle, &g);
        eprintln!(
            "{label} vs transformers' f32 on the {n} golden cases: Q-Former cosine >= {cos:.6}, \
             max-abs {max_abs:.4}; greedy tokens identical on {same}/{n}"
        );
        assert!(cos >= 0.999, "{label}: Q-Former cosine {cos}");
        derived.push((label, scores));
    }
    let mut rows = vec![
        ("f32", &f32_scores),
        ("q8_0", &q8_scores),
        ("q4_k_m", &q4_scores),
    ];
    rows.extend(llm_types.iter().map(|(kind, _, scores)| (*kind, scores)));
    rows.extend(derived.iter().map(|(label, scores)| (*label, scores)));
    eprintln!(
        "demo bundle, held-out accuracy ({} questions, {}x{} scenes):\n{}",
        g.cases.len(),
        g.eval_size[0],
        g.eval_size[1],
        table(&rows)
    );
    // The Rust pipeline scores what transformers scores on the same cases...
    let mut reference: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for c in &g.cases {
        let r = reference.entry(c.qtype.clone()).or_default();
        r.0 += usize::from(c.reference_correct);
        r.1 += 1;
    }
    let reference: BTreeMap<String, f64> = reference
        .into_iter()
        .map(|(t, (right, n))| (t, 100.0 * right as f64 / n as f64))
        .collect();
    assert_close("f32 vs transformers", &f32_scores, &reference, 2.0);
    // ... and quantizing the LLM costs little.
    let f32_pct: BTreeMap<String, f64> = f32_scores
        .iter()
        .map(|(t, &(right, n, _))| (t.clone(), 100.0 * right as f64 / n as f64))
        .collect();
    assert_close("q8_0 vs f32", &q8_scores, &f32_pct, 3.0);
    assert_close("q4_k_m vs f32", &q4_scores, &f32_pct, 6.0);
    for (kind, bound, scores) in &llm_types {
        assert_close(&format!("{kind} vs f32"), scores, &f32_pct, *bound);
    }
    for (label, scores) in &derived {
        assert_close(&format!("{label} vs f32"), scores, &f32_pct, 1.0);
    }
}

/// The choices an automation would offer for a question of `qtype`.
fn choices_for(qtype: &str, prompt: &str) -> Option<Vec<String>> {
    let words = |w: &[&str]| Some(w.iter().map(|s| s.to_string()).collect());
    match qtype {
        "exists" => words(&["yes", "no"]),
        "color" => words(&["red", "green", "blue", "yellow"]),
        "count_shape" | "count_color" => words(&["zero", "one", "two", "three"]),
        "left" => {
            // "Which is further left, the A or the B?"
            let rest = prompt.split_once(", the ")?.1.strip_suffix('?')?;
            let (a, b) = rest.split_once(" or the ")?;
            Some(vec![a.to_string(), b.to_string()])
        }
        _ => None,
    }
}

/// Constrained answers (issue: answers an automation can branch on): over
/// held-out scenes every `choices` answer is exactly one of the choices and
/// every `format = "number"` answer parses as a number; the choices keep the
/// reference's accuracy (greedy within the choices can only turn an answer
/// outside them into one inside). Constrained answers deliberately may
/// differ from the reference's free text; the unconstrained path is held to
/// it above.
#[test]
fn constrained_answers_conform_and_keep_the_accuracy() {
    use blipd::llm::Constraint;
    use std::sync::Arc;
    const PER_TYPE: usize = 300;
    let g = goldens();
    let opts = PipelineOptions::default().with_threads(2);
    let mut p = Pipeline::load(demo_dir(), &opts).unwrap();
    let mut taken: BTreeMap<&str, usize> = BTreeMap::new();
    // Per type: (constrained right, reference right, asked).
    let mut scores: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let (mut numbers, mut numeric) = (0, 0);
    // Per type, every third question again as JSON under a schema: (right, asked).
    let mut json_scores: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for case in &g.cases {
        let Some(choices) = choices_for(&case.qtype, &case.prompt) else {
            continue;
        };
        let n = taken.entry(case.qtype.as_str()).or_default();
        if *n == PER_TYPE {
            continue;
        }
        *n += 1;
        let img = Scene::sample(case.seed).render(g.eval_size[0], g.eval_size[1]);
        let frame = p.image_features(&img).unwrap();
        let params = GenerateParams {
            max_new_tokens: g.max_new_tokens,
            sampling: None,
            constraint: Some(Arc::new(Constraint::Choices(choices.clone()))),
        };
        let a = p.answer(&frame, &case.prompt, &params, |_| {}).unwrap();
        assert!(
            choices.contains(&a.text),
            "seed {} {:?}: {:?} is none of {choices:?}",
            case.seed,
            case.prompt,
            a.text
        );
        let s = scores.entry(case.qtype.clone()).or_default();
        s.0 += usize::from(a.text == case.answer);
        s.1 += usize::from(case.reference_correct);
        s.2 += 1;
        if (*n).is_multiple_of(3) {
            // `"format": "json"` with a schema, checked by a JSON Schema
            // validator (the `jsonschema` crate), not by blipd's grammar.
            let schema = serde_json::json!({
                "type": "object",
                "properties": {"answer": {"enum": choices}},
                "required": ["answer"]
            });
            let c = Constraint::from_parts(None, Some("json"), Some(&schema))
                .unwrap()
                .unwrap();
            let params = GenerateParams {
                constraint: Some(Arc::new(c)),
                max_new_tokens: 40,
                ..params.clone()
            };
            let a = p.answer(&frame, &case.prompt, &params, |_| {}).unwrap();
            let v: serde_json::Value = serde_json::from_str(&a.text)
                .unwrap_or_else(|e| panic!("{:?} is not JSON: {e}", a.text));
            let validator = jsonschema::validator_for(&schema).unwrap();
            assert!(
                validator.is_valid(&v),
                "{v} does not validate against {schema}"
            );
            let s = json_scores.entry(case.qtype.clone()).or_default();
            s.0 += usize::from(v["answer"] == case.answer.as_str());
            s.1 += 1;
        }
        if case.qtype.starts_with("count") {
            let params = GenerateParams {
                constraint: Some(Arc::new(Constraint::Number)),
                ..params
            };
            let a = p.answer(&frame, &case.prompt, &params, |_| {}).unwrap();
            assert!(a.text.parse::<f64>().is_ok(), "{:?} is no number", a.text);
            let want = ["zero", "one", "two", "three"]
                .iter()
                .position(|w| *w == case.answer)
                .unwrap();
            numbers += 1;
            numeric += usize::from(a.text == want.to_string());
        }
    }
    let mut table = String::from(
        "| question type | choices | JSON with a schema | free text (reference) |\n|---|---|---|---|",
    );
    for (qtype, (right, reference, n)) in &scores {
        let pct = |x: usize, n: usize| 100.0 * x as f64 / n as f64;
        let (jr, jn) = json_scores.get(qtype).copied().unwrap_or_default();
        table += &format!(
            "\n| {qtype} | {right}/{n} ({:.1} %) | {jr}/{jn} ({:.1} %) | {reference}/{n} ({:.1} %) |",
            pct(*right, *n),
            pct(jr, jn.max(1)),
            pct(*reference, *n)
        );
        assert!(
            right >= reference,
            "{qtype}: constrained {right}/{n} below the reference's {reference}/{n}"
        );
    }
    println!("{table}");
    println!(
        "format = number on count questions: {numeric}/{numbers} right (the demo model \
         was trained to answer counts in words)"
    );
    assert_eq!(scores.len(), 5);
}
