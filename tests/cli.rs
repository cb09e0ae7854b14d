//! Drives the real `blipd` binary: `ask`, `quantize` (LLM and graphs) and `check-config`.

mod common;

use common::*;
use std::process::Command;

fn blipd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blipd"))
}

#[test]
fn ask_json_reports_tokens_and_stage_timings() {
    let g = golden("tiny-b");
    let case = g.cases.iter().find(|c| c.image == "porch.jpg").unwrap();
    let v = json_stdout(
        blipd()
            .args(["ask", "--json", "--threads", "2", "--model"])
            .arg(bundle_dir("tiny-b"))
            .arg("--image")
            .arg(image_path(&case.image))
            .arg(&case.prompt),
    );
    let tokens: Vec<u32> = serde_json::from_value(v["tokens"].clone()).unwrap();
    assert_eq!(tokens, case.tokens);
    assert_eq!(v["answer"].as_str().unwrap(), case.text);
    for key in [
        "load_ms",
        "preprocess_ms",
        "vision_ms",
        "qformer_ms",
        "prefill_ms",
        "decode_ms",
        "decode_tokens_per_s",
        "total_ms",
    ] {
        let t = v["timings"][key].as_f64().unwrap_or(-1.0);
        assert!(t.is_finite() && t >= 0.0, "{key} = {t}");
    }
    assert!(v["timings"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn ask_plain_prints_the_answer_and_honours_max_tokens() {
    let g = golden("tiny-a");
    let case = &g.cases[0];
    let out = blipd()
        .args(["ask", "--max-tokens", "5", "--json", "--model"])
        .arg(bundle_dir("tiny-a"))
        .arg("--image")
        .arg(image_path(&case.image))
        .arg(&case.prompt)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tokens: Vec<u32> = serde_json::from_value(v["tokens"].clone()).unwrap();
    assert_eq!(tokens, case.tokens[..5]);
    assert_eq!(v["stop"], "max_tokens");

    let out = blipd()
        .args(["ask", "--model"])
        .arg(bundle_dir("tiny-a"))
        .arg("--image")
        .arg(image_path(&case.image))
        .arg(&case.prompt)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", case.text)
    );
}

#[test]
fn ask_errors_are_specific_and_exit_nonzero() {
    let run = |args: &[&str]| {
        let out = blipd().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    };
    let model = bundle_dir("tiny-a");
    let model = model.to_str().unwrap();
    let img = image_path("garage.png");
    let img = img.to_str().unwrap();
    let e = run(&["ask", "--model", model, "--image", "/nope.png", "hi"]);
    assert!(e.contains("/nope.png"), "{e}");
    let e = run(&["ask", "--model", "/nope", "--image", img, "hi"]);
    assert!(e.contains("/nope"), "{e}");
    let e = run(&["ask", "--model", model, "--image", img, "  "]);
    assert!(e.contains("empty"), "{e}");
    let e = run(&[
        "ask",
        "--model",
        model,
        "--image",
        img,
        "--temperature",
        "0",
        "hi",
    ]);
    assert!(
        e.contains("--temperature") && !e.contains("panicked"),
        "{e}"
    );
}

#[test]
fn quantized_bundle_loads_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let out_bundle = dir.path().join("tiny-a-q8_0");
    let st = blipd()
        .arg("quantize")
        .arg(bundle_dir("tiny-a"))
        .arg(&out_bundle)
        .arg("q8_0")
        .status()
        .unwrap();
    assert!(st.success());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_bundle.join("bundle.json")).unwrap())
            .unwrap();
    assert_eq!(m["llm"]["weight_type"], "q8_0");
    let f32_size = std::fs::metadata(bundle_dir("tiny-a").join("llm.gguf"))
        .unwrap()
        .len();
    let q_size = std::fs::metadata(out_bundle.join("llm.gguf"))
        .unwrap()
        .len();
    assert!(q_size * 2 < f32_size, "q8_0 {q_size} vs f32 {f32_size}");

    // Loads (checksums of the rewritten manifest verified) and answers.
    let g = golden("tiny-a");
    let mut agree = 0;
    let mut total = 0;
    let mut p = blipd::Pipeline::load(&out_bundle, &Default::default()).unwrap();
    let params = blipd::llm::GenerateParams {
        max_new_tokens: g.max_new_tokens,
        sampling: None,
        constraint: None,
    };
    for case in &g.cases {
        let img = blipd::preprocess::load_rgb(&image_path(&case.image)).unwrap();
        let a = p.ask(&img, &case.prompt, &params).unwrap();
        assert!(!a.tokens.is_empty());
        agree += a
            .tokens
            .iter()
            .zip(&case.tokens)
            .take_while(|(x, y)| x == y)
            .count();
        total += case.tokens.len();
    }
    eprintln!("q8_0 vs f32 reference: {agree}/{total} leading greedy tokens agree");

    // A plain GGUF -> GGUF quantization works too.
    let gguf = dir.path().join("q4.gguf");
    let st = blipd()
        .arg("quantize")
        .arg(bundle_dir("tiny-b").join("llm.gguf"))
        .arg(&gguf)
        .arg("q4_0")
        .status()
        .unwrap();
    assert!(st.success());
    assert!(gguf.is_file());
}

#[test]
fn quantize_rejects_unknown_types_and_existing_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = blipd()
        .arg("quantize")
        .arg(bundle_dir("tiny-a"))
        .arg(dir.path().join("x"))
        .arg("q3_bogus")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("q4_k_m"));
    let out = blipd()
        .arg("quantize")
        .arg(bundle_dir("tiny-a"))
        .arg(dir.path())
        .arg("q8_0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

/// `blipd quantize BUNDLE OUT q8_0 --vision int8 --qformer int8`: every
/// part rewritten in one run, the manifest says what each is and what it was
/// made from, and the bundle loads (checksums verified) and answers.
#[test]
fn quantize_rewrites_graphs_in_int8_and_the_bundle_answers() {
    let dir = tempfile::tempdir().unwrap();
    let out_bundle = dir.path().join("tiny-b-int8");
    let out = blipd()
        .args(["quantize", "--threads", "2"])
        .arg(bundle_dir("tiny-b"))
        .arg(&out_bundle)
        .args(["q8_0", "--vision", "int8", "--qformer", "int8"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("llm q8_0, vision int8, qformer int8"),
        "{stderr}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_bundle.join("bundle.json")).unwrap())
            .unwrap();
    let src: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle_dir("tiny-b").join("bundle.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["llm"]["weight_type"], "q8_0");
    for part in ["vision", "qformer"] {
        assert_eq!(m[part]["precision"], "int8");
        let d = &m[part]["derived_from"];
        let file = src[part]["file"].as_str().unwrap();
        assert_eq!(d["sha256"], src["files"][file]["sha256"]);
        assert!(d["tool"].as_str().unwrap().starts_with("blipd quantize"));
        let a = &d["agreement"];
        assert_eq!(a["pictures"].as_array().unwrap().len(), 3);
        for key in ["vision_cosine_min", "qformer_cosine_min"] {
            let c = a[key].as_f64().unwrap();
            assert!(c > 0.999 && c <= 1.0 + 1e-9, "{key} {c}");
        }
    }
    let f32_size = std::fs::metadata(bundle_dir("tiny-b").join("vision.onnx.data"))
        .unwrap()
        .len();
    let int8_size = std::fs::metadata(out_bundle.join("vision.onnx.data"))
        .unwrap()
        .len();
    assert!(
        int8_size * 2 < f32_size,
        "int8 {int8_size} vs f32 {f32_size}"
    );
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("partial")),
        "a partial folder was left behind"
    );

    let g = golden("tiny-b");
    let mut p = blipd::Pipeline::load(&out_bundle, &Default::default()).unwrap();
    let params = blipd::llm::GenerateParams {
        max_new_tokens: g.max_new_tokens,
        sampling: None,
        constraint: None,
    };
    let mut same = 0;
    for case in &g.cases {
        let img = blipd::preprocess::load_rgb(&image_path(&case.image)).unwrap();
        let a = p.ask(&img, &case.prompt, &params).unwrap();
        assert!(!a.tokens.is_empty());
        same += usize::from(a.tokens == case.tokens);
    }
    eprintln!(
        "int8 graphs + q8_0 LLM: {same}/{} cases token-identical to the f32 goldens",
        g.cases.len()
    );
    let out = blipd()
        .arg("check-bundle")
        .arg(&out_bundle)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vision int8, qformer int8"));

    // A derived graph is not derived again.
    let out = blipd()
        .arg("quantize")
        .arg(&out_bundle)
        .arg(dir.path().join("again"))
        .args(["--vision", "int8"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already int8; derive from an f32 bundle"),
        "{stderr}"
    );
}

#[test]
fn quantize_names_what_it_cannot_make() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], input: &std::path::Path| {
        let out = blipd()
            .arg("quantize")
            .arg(input)
            .arg(dir.path().join("x"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let tiny = bundle_dir("tiny-a");
    assert!(run(&["--vision", "int4"], &tiny).contains("--vision int4: int8 or f16"));
    // As models/vision_precision.py: an f16 Q-Former was never measured.
    assert!(run(&["--qformer", "f16"], &tiny).contains("blipd quantize makes int8"));
    assert!(run(&[], &tiny).contains("name what to rewrite"));
    assert!(run(&["--vision", "int8"], &tiny.join("llm.gguf")).contains("not a bundle directory"));
    assert!(!dir.path().join("x").exists());

    // A graph the rewrite refuses (here an int8 Q-Former that the manifest
    // calls f32): a named error, and nothing left behind.
    let src = dir.path().join("mislabelled");
    std::fs::create_dir(&src).unwrap();
    for e in std::fs::read_dir(&tiny).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), src.join(e.file_name())).unwrap();
    }
    let int8 = dir.path().join("int8");
    let st = blipd()
        .args(["quantize", "--threads", "1"])
        .arg(&tiny)
        .arg(&int8)
        .args(["--qformer", "int8"])
        .output()
        .unwrap();
    assert!(st.status.success());
    let manifest = src.join("bundle.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    for f in ["qformer.onnx", "qformer.onnx.data"] {
        std::fs::copy(int8.join(f), src.join(f)).unwrap();
        let path = src.join(f);
        m["files"][f] = serde_json::json!({
            "sha256": blipd::bundle::sha256_file(&path).unwrap(),
            "size": std::fs::metadata(&path).unwrap().len(),
        });
    }
    std::fs::write(&manifest, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let stderr = run(&["--qformer", "int8"], &src);
    assert!(
        stderr.contains("no MatMul with a constant f32 weight"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n == "x")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/blipd.toml");
    let out = blipd().arg("check-config").arg(&example).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        printed.contains("garage-pi") && printed.contains("v4l2"),
        "{printed}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nqueue = 0\n").unwrap();
    let out = blipd().arg("check-config").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.queue"));
    std::fs::write(
        &bad,
        "[[camera]]\nname = \"x\"\ntype = \"file\"\nfsp = 3\npath = \"/a\"\n",
    )
    .unwrap();
    let out = blipd().arg("check-config").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fsp"));
}

/// The unit file passes `systemd-analyze verify` and its hardening keeps the
/// `systemd-analyze security` exposure under 2.5 (systemd is installed by
/// scripts/deps.sh).
#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("systemd/blipd.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blipd.service");
    // verify checks that ExecStart exists: point it at the built binary.
    std::fs::write(
        &path,
        unit.replace("/usr/bin/blipd", env!("CARGO_BIN_EXE_blipd")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for blipd.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {text}"));
    eprintln!("systemd-analyze security exposure: {level}");
    assert!(level <= 2.5, "exposure {level}");
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
}

#[test]
fn bench_reports_every_stage() {
    let r = json_stdout(blipd().args([
        "bench", "--runs", "1", "--warmup", "0", "--tokens", "5", "--json",
    ]));
    assert_eq!(r["model"], "demo");
    assert_eq!(r["runs"], 1);
    assert!(r["load_ms"].as_f64().unwrap() > 0.0);
    assert!(r["prompt_tokens"].as_u64().unwrap() > 0);
    assert!((1..=5).contains(&r["answer_tokens"].as_u64().unwrap()));
    for key in [
        "preprocess_ms",
        "vision_ms",
        "qformer_ms",
        "prefill_ms",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "first_token_ms",
        "answer_ms",
        "cached_answer_ms",
    ] {
        let s = &r[key];
        let (med, min, max) = (
            s["median"].as_f64().unwrap(),
            s["min"].as_f64().unwrap(),
            s["max"].as_f64().unwrap(),
        );
        assert!(med > 0.0 && min <= med && med <= max, "{key}: {s}");
    }
    assert!(r["peak_rss_mib"].as_f64().unwrap() >= r["rss_after_load_mib"].as_f64().unwrap());
    // The table names every stage.
    let out = blipd().args(["bench", "--runs", "1"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    for row in [
        "load",
        "vision",
        "Q-Former",
        "prefill",
        "decode speed",
        "time to first token",
        "2nd question",
    ] {
        assert!(table.contains(row), "{row}: {table}");
    }
}

/// `blipd ask --scene SEED` with no `--model`: the default (demo) bundle
/// answers about the demo scene as transformers did (goldens/demo.json).
#[test]
fn ask_about_a_demo_scene_with_the_default_bundle() {
    let path = fixtures().join("goldens/demo.json");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["golden"] == true && c["type"] == "describe")
        .unwrap();
    let r = json_stdout(
        blipd()
            .env_remove("BLIPD_MODEL")
            .args(["ask", "--json", "--scene"])
            .arg(case["seed"].as_u64().unwrap().to_string())
            .arg(case["prompt"].as_str().unwrap()),
    );
    assert_eq!(r["answer"], case["reference_text"]);
    assert_eq!(r["tokens"], case["tokens"]);
    assert_eq!(r["stop"], case["stop"]);
    assert!(r["model"].as_str().unwrap().ends_with("models/demo"));
}

#[test]
fn check_bundle_hashes_every_file_and_names_a_corrupt_one() {
    let out = blipd()
        .arg("check-bundle")
        .arg(bundle_dir("tiny-a"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("ok (7 files") && err.contains("sha256 match"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(bundle_dir("tiny-a")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let f = dir.path().join("qformer.onnx.data");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    let out = blipd()
        .arg("check-bundle")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("qformer.onnx.data") && err.contains("corrupt"),
        "{err}"
    );
}
