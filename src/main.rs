//! `blipd` command line: parses arguments and starts things; the work lives in the library.

use anyhow::{bail, Context, Result};
use blipd::llm::{ffi, SamplerParams};
use blipd::{Pipeline, PipelineOptions};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "blipd",
    version,
    about = "InstructBLIP vision-language daemon: camera frames in, answers out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "blipd=debug,llama.cpp=info"
    /// [default: "info,rumqttd=off" for serve, "warn" otherwise; the embedded
    /// broker logs every client's disconnect at ERROR: "info,rumqttd=info"
    /// shows them].
    #[arg(long, global = true, env = "BLIPD_LOG")]
    log: Option<String>,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Answer one instruction about an image file, or ask a running daemon (--mqtt).
    Ask(AskArgs),
    /// Run the daemon: cameras in, questions and answers over MQTT.
    Serve(ServeArgs),
    /// Validate a config file and print it with every default filled in.
    CheckConfig(CheckConfigArgs),
    /// Hash every file of a bundle against its manifest (ignores verified stamps).
    CheckBundle(CheckBundleArgs),
    /// Quantize a GGUF file, or a whole bundle's LLM, with llama.cpp's quantizer.
    Quantize(QuantizeArgs),
    /// Check this machine for the daemon: config, bundle, memory, cameras, broker, state dir.
    Doctor(DoctorArgs),
    /// Measure every stage on this machine: load, vision, Q-Former, prefill, decode, memory.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Bundle directory [default: $BLIPD_MODEL, else the demo bundle].
    #[arg(long, env = "BLIPD_MODEL")]
    model: Option<PathBuf>,
    /// Image to answer about [default: a generated 640x480 test picture; for
    /// the demo bundle, demo scene 0 as the test-pattern camera shows it].
    #[arg(long)]
    image: Option<PathBuf>,
    /// Threads for every stage [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Measured rounds (each: a new frame, a question, a second question about it).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Unreported rounds first (page in weights, warm caches).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 20)]
    tokens: usize,
    /// Keep llama.cpp's weights in their file layout (no repacking: less
    /// resident memory, slower quantized matmuls on some CPUs).
    #[arg(long)]
    no_repack: bool,
    /// Read the GGUF into memory instead of memory-mapping it.
    #[arg(long)]
    no_mmap: bool,
    /// LLM context length, as `n_ctx` in the config (0: the model's own; its
    /// KV cache is what a shorter context saves, 1 GiB at 2048 for a 7B).
    #[arg(long, default_value_t = 0)]
    n_ctx: u32,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Wait for a line on stdin before each round and print each round as a
    /// JSON line (for models/compare.py, which alternates runtimes).
    #[arg(long)]
    lockstep: bool,
}

#[derive(Args)]
struct AskArgs {
    /// Bundle directory written by models/export.py [default: $BLIPD_MODEL, else the
    /// demo bundle (models/demo)].
    #[arg(long, env = "BLIPD_MODEL")]
    model: Option<PathBuf>,
    /// Image file (PNG, JPEG, BMP, WebP), answered locally; with --mqtt, sent
    /// to the daemon to answer about instead of a camera's frame.
    #[arg(
        long,
        required_unless_present_any = ["mqtt", "scene"],
        conflicts_with_all = ["scene", "camera"]
    )]
    image: Option<PathBuf>,
    /// Answer about demo scene SEED (what the test-pattern camera shows) instead
    /// of an image file; `models/scenes.py SEED` draws the same picture.
    #[arg(long, value_name = "SEED", conflicts_with = "mqtt")]
    scene: Option<u64>,
    /// The answer must be exactly one of these (comma-separated), e.g.
    /// `--choices yes,no`: greedy within them (llama.cpp's grammar sampler).
    #[arg(long, value_delimiter = ',', conflicts_with = "format")]
    choices: Option<Vec<String>>,
    /// The answer must be a `number` or `json` (an object).
    #[arg(long, value_parser = ["number", "json"])]
    format: Option<String>,
    /// With `--format json`: a JSON Schema file the answer must validate against.
    #[arg(long, requires = "format")]
    schema: Option<PathBuf>,
    /// Ask the daemon behind this broker instead (mqtt://host:port).
    #[arg(long)]
    mqtt: Option<String>,
    /// Device id of the daemon to ask (with --mqtt) [default: this host's name].
    #[arg(long, requires = "mqtt")]
    device: Option<String>,
    /// Camera to ask about (with --mqtt) [default: the daemon's default camera].
    #[arg(long, requires = "mqtt")]
    camera: Option<String>,
    /// Print the answer as it is generated (with --mqtt).
    #[arg(long, requires = "mqtt")]
    stream: bool,
    /// Save the JPEG of the frame the daemon answered about to FILE (with --mqtt).
    #[arg(long, requires = "mqtt", value_name = "FILE")]
    snapshot: Option<PathBuf>,
    /// Topic prefix of the daemon (with --mqtt).
    #[arg(long, default_value = "blipd", requires = "mqtt")]
    topic_prefix: String,
    /// CA certificate (PEM) of an mqtts:// broker (with --mqtt).
    #[arg(long, requires = "mqtt", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Broker user name (with --mqtt).
    #[arg(long, requires = "mqtt", env = "BLIPD_MQTT_USERNAME")]
    username: Option<String>,
    /// File holding the broker password (with --mqtt); or BLIPD_MQTT_PASSWORD.
    #[arg(long, requires = "mqtt", value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Seconds to wait for the answer (with --mqtt).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// The instruction, e.g. "Is the garage door open?".
    instruction: String,
    /// Most tokens to generate [default: the bundle's generation config].
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long)]
    temperature: Option<f32>,
    /// Top-k for sampling (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: i32,
    /// Top-p (nucleus) for sampling.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Repetition penalty as in transformers (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Threads for every stage [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Print JSON with token ids and per-stage timings.
    #[arg(long)]
    json: bool,
    /// Skip the sha256 check of the bundle files at load.
    #[arg(long)]
    no_verify: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file [default: zero-config: embedded broker, test-pattern camera, tiny bundle].
    #[arg(long, env = "BLIPD_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct CheckConfigArgs {
    /// The TOML config file to check.
    file: PathBuf,
}

#[derive(Args)]
struct CheckBundleArgs {
    /// The bundle directory.
    dir: PathBuf,
}

#[derive(Args)]
struct DoctorArgs {
    /// TOML config file [default: zero-config: embedded broker, test-pattern camera, tiny bundle].
    #[arg(long, env = "BLIPD_CONFIG")]
    config: Option<PathBuf>,
    /// Print the checks as a JSON array of {check, status, detail, fix}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct QuantizeArgs {
    /// Input GGUF file, or bundle directory.
    input: PathBuf,
    /// Output GGUF file, or bundle directory (a copy of the input bundle with the named parts rewritten).
    output: PathBuf,
    /// LLM type: q4_k_m, q8_0, q5_k_m, q6_k, q4_0, f16, ... (optional with --vision/--qformer).
    #[arg(value_name = "TYPE")]
    kind: Option<String>,
    /// Bundle only: rewrite the vision graph in int8 (dynamic int8 MatMuls) or
    /// f16 (norms and softmax kept f32), as models/vision_precision.py --vision.
    #[arg(long, value_name = "int8|f16")]
    vision: Option<String>,
    /// Bundle only: rewrite the Q-Former graph in int8.
    #[arg(long, value_name = "int8")]
    qformer: Option<String>,
    /// Threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Serve(_) => "info,rumqttd=off",
        // The doctor reports problems itself; camera retry warnings would repeat them.
        Command::Doctor(_) => "error",
        // Rewriting a ViT-g's graphs takes a minute or more: say what it is doing.
        Command::Quantize(_) => "warn,blipd::pipeline::derive=info",
        _ => "warn",
    };
    init_logging(cli.log.as_deref().unwrap_or(default_log));
    let result = match cli.command {
        Command::Ask(a) if a.mqtt.is_some() => ask_remote(a),
        Command::Ask(a) => ask(a),
        Command::Serve(s) => serve(s),
        Command::CheckConfig(c) => check_config(c),
        Command::CheckBundle(c) => check_bundle(c),
        Command::Quantize(q) => quantize(q),
        Command::Doctor(d) => doctor(d),
        Command::Bench(b) => bench(b),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blipd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Plain text when not on a terminal (journald, pipes): no colour codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn bench(b: BenchArgs) -> Result<()> {
    let model = b
        .model
        .clone()
        .unwrap_or_else(blipd::bundle::default_bundle_dir);
    let mut opts = PipelineOptions::default();
    if let Some(t) = b.threads {
        opts = opts.with_threads(threads_arg(t)?);
    }
    if b.runs == 0 || b.tokens == 0 {
        bail!("--runs and --tokens must be at least 1");
    }
    opts.llm.model.repack = !b.no_repack;
    opts.llm.model.use_mmap = !b.no_mmap;
    opts = opts.with_context(b.n_ctx);
    let image = match &b.image {
        Some(p) => blipd::preprocess::load_rgb(p)?,
        None => blipd::bench::default_image(&model),
    };
    let bench = blipd::bench::BenchOptions {
        runs: b.runs,
        warmup: b.warmup,
        tokens: b.tokens,
        lockstep: b.lockstep,
        ..blipd::bench::BenchOptions::for_bundle(&model)
    };
    let report = blipd::bench::run(&model, &opts, &bench, &image)
        .with_context(|| format!("benchmarking {}", model.display()))?;
    if b.lockstep {
        println!("{}", serde_json::to_string(&report)?);
    } else if b.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn ask(a: AskArgs) -> Result<()> {
    let model = a
        .model
        .clone()
        .unwrap_or_else(blipd::bundle::default_bundle_dir);
    let mut opts = PipelineOptions::default().with_checksums(!a.no_verify);
    if let Some(t) = a.threads {
        opts = opts.with_threads(threads_arg(t)?);
    }
    let mut pipeline = Pipeline::load(&model, &opts)
        .with_context(|| format!("loading bundle {}", model.display()))?;
    let mut params = pipeline.default_params();
    if let Some(n) = a.max_tokens {
        params.max_new_tokens = n;
    }
    if let Some(t) = a.temperature {
        params.sampling = Some(sampler_params(&a, t)?);
    }
    params.constraint = answer_constraint(&a)?.map(std::sync::Arc::new);
    let img = match (&a.image, a.scene) {
        (Some(image), _) => blipd::preprocess::load_rgb(image)?,
        (None, Some(seed)) => {
            let (w, h) = blipd::camera::TEST_PATTERN_SIZE;
            blipd::camera::scene::Scene::sample(seed).render(w, h)
        }
        (None, None) => bail!("--image or --scene is required without --mqtt"),
    };
    let answer = pipeline.ask(&img, &a.instruction, &params)?;
    if a.json {
        let out = serde_json::json!({
            "answer": answer.text,
            "tokens": answer.tokens,
            "prompt_tokens": answer.prompt_tokens,
            "stop": answer.stop,
            "model": model.display().to_string(),
            "timings": {
                "load_ms": pipeline.load_time().as_secs_f64() * 1e3,
                "preprocess_ms": answer.timings.preprocess_ms,
                "vision_ms": answer.timings.vision_ms,
                "qformer_ms": answer.timings.qformer_ms,
                "prefill_ms": answer.timings.prefill_ms,
                "decode_ms": answer.timings.decode_ms,
                "decode_tokens_per_s": answer.timings.decode_tokens_per_s,
                "total_ms": answer.timings.total_ms,
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", answer.text);
    }
    Ok(())
}

fn ask_remote(a: AskArgs) -> Result<()> {
    use blipd::mqtt::{ask, wire::Request};
    use std::io::Write;
    let url = a.mqtt.clone().context("--mqtt")?;
    if let Some(t) = a.temperature {
        sampler_params(&a, t)?;
    }
    answer_constraint(&a)?;
    let device_id = a
        .device
        .clone()
        .unwrap_or_else(|| blipd::config::Config::default().device_id());
    let image = match &a.image {
        Some(path) => {
            use base64::Engine as _;
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Some(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        None => None,
    };
    let request = Request {
        id: None,
        camera: a.camera.clone(),
        image,
        prompt: a.instruction.clone(),
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.temperature.map(|_| a.top_p),
        top_k: a.temperature.map(|_| a.top_k),
        seed: a.temperature.map(|_| a.seed),
        stream: a.stream,
        choices: a.choices.clone(),
        format: a.format.clone(),
        schema: schema_arg(&a)?,
        snapshot: a.snapshot.is_some(),
        response_topic: None,
    };
    let broker = blipd::config::MqttConfig {
        url: Some(url),
        ca_file: a.ca_file.clone(),
        username: a.username.clone(),
        // From the environment rather than the command line, which `ps` shows.
        password: std::env::var("BLIPD_MQTT_PASSWORD").ok(),
        password_file: a.password_file.clone(),
        ..Default::default()
    };
    let remote = ask::RemoteAsk {
        broker,
        topic_prefix: a.topic_prefix.clone(),
        device_id,
        request,
        timeout: std::time::Duration::from_secs(a.timeout),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let streamed = a.stream && !a.json;
    let (answer, jpeg) = rt.block_on(ask::ask(remote, |chunk| {
        if streamed {
            print!("{chunk}");
            let _ = std::io::stdout().flush();
        }
    }))?;
    if let Some(path) = &a.snapshot {
        let jpeg = jpeg.context("the daemon answered but published no snapshot")?;
        std::fs::write(path, jpeg).with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if streamed {
        println!();
    } else {
        println!("{}", answer.answer);
    }
    Ok(())
}

fn serve(s: ServeArgs) -> Result<()> {
    let cfg = match &s.config {
        Some(path) => blipd::config::Config::load(path)?,
        None => blipd::config::Config::zero_config(),
    };
    blipd::serve::serve(cfg, s.config.clone(), || {})?;
    Ok(())
}

fn check_config(c: CheckConfigArgs) -> Result<()> {
    let mut cfg = blipd::config::Config::load(&c.file)?;
    // The effective config, without its secret.
    if cfg.mqtt.password.is_some() {
        cfg.mqtt.password = Some("<redacted>".into());
    }
    println!("{}", toml::to_string_pretty(&cfg)?);
    eprintln!("{}: ok", c.file.display());
    Ok(())
}

fn check_bundle(c: CheckBundleArgs) -> Result<()> {
    let t = std::time::Instant::now();
    let bundle = blipd::bundle::Bundle::open(&c.dir)?;
    bundle.verify()?;
    let bytes: u64 = bundle.manifest.files.values().map(|f| f.size).sum();
    let m = &bundle.manifest;
    eprintln!(
        "{}: ok ({} files, {} MiB, {}; sha256 match, {:.1} s)",
        c.dir.display(),
        m.files.len(),
        bytes >> 20,
        m.precisions(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints every check (text or JSON) and fails when any check failed, so
/// scripts and provisioning tools can gate on the exit status.
fn doctor(d: DoctorArgs) -> Result<()> {
    use blipd::doctor::{self, Status};
    let path = d.config.as_deref();
    let checks = match doctor::load_config(path) {
        Ok(cfg) => doctor::run(&cfg, path),
        Err(failed) => vec![failed],
    };
    if d.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            println!("{}", c.render());
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        bail!(
            "{failed} check{} failed",
            if failed == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// `--choices` / `--format`, checked as the daemon checks a request's.
fn answer_constraint(a: &AskArgs) -> Result<Option<blipd::llm::Constraint>> {
    let req = blipd::mqtt::wire::Request {
        choices: a.choices.clone(),
        format: a.format.clone(),
        schema: schema_arg(a)?,
        ..Default::default()
    };
    blipd::serve::intake::constraint(&req).map_err(|(_, m)| anyhow::anyhow!("{m}"))
}

/// `--schema FILE`: the JSON Schema it holds.
fn schema_arg(a: &AskArgs) -> Result<Option<serde_json::Value>> {
    let Some(path) = &a.schema else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(Some(v))
}

/// `--threads N`: at least 1.
fn threads_arg(t: usize) -> Result<usize> {
    if t == 0 {
        bail!("--threads must be at least 1");
    }
    Ok(t)
}

fn sampler_params(a: &AskArgs, temperature: f32) -> Result<SamplerParams> {
    let p = SamplerParams {
        temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repeat_penalty: a.repeat_penalty,
        seed: a.seed,
    };
    p.validate()
        .map_err(|e| anyhow::anyhow!("--{}", e.replace('_', "-")))?;
    Ok(p)
}

fn quantize(q: QuantizeArgs) -> Result<()> {
    use blipd::llm::quantize::{ftype, stderr_progress};
    let llm = q.kind.as_deref().map(ftype).transpose()?;
    use blipd::pipeline::derive::GraphPrecision;
    let precision = |flag: &str, value: &Option<String>| match value.as_deref() {
        None | Some("f32") => Ok(None),
        Some("int8") => Ok(Some(GraphPrecision::Int8)),
        // As models/vision_precision.py: the Q-Former's f16 was not measured.
        Some("f16") if flag == "vision" => Ok(Some(GraphPrecision::F16)),
        Some(other) if flag == "vision" => bail!("--vision {other}: int8 or f16"),
        Some(other) => bail!("--{flag} {other}: blipd quantize makes int8"),
    };
    let vision = precision("vision", &q.vision)?;
    let qformer = precision("qformer", &q.qformer)?;
    let threads = q.threads.unwrap_or(0);
    if q.input.is_dir() {
        if llm.is_none() && vision.is_none() && qformer.is_none() {
            bail!("name what to rewrite: an LLM TYPE, --vision int8|f16 and/or --qformer int8");
        }
        let src = blipd::bundle::Bundle::open(&q.input)?;
        src.verify()?;
        let plan = blipd::pipeline::derive::QuantizePlan {
            llm,
            vision,
            qformer_int8: qformer.is_some(),
            threads,
            llm_progress: Some(stderr_progress()),
        };
        let b = blipd::pipeline::derive::quantize_bundle(&src, &q.output, plan)?;
        let (out, what) = (q.output.display(), b.manifest.precisions());
        eprintln!("wrote bundle {out} ({what})");
        if let Some(line) = blipd::pipeline::derive::agreement_line(&b) {
            eprintln!("{line}");
        }
        return Ok(());
    }
    if vision.is_some() || qformer.is_some() {
        bail!(
            "--vision and --qformer rewrite a bundle's graphs; {} is not a bundle directory",
            q.input.display()
        );
    }
    let Some((_, ftype)) = llm else {
        bail!("name the TYPE to quantize {} to", q.input.display());
    };
    if !q.input.is_file() {
        bail!("{} does not exist", q.input.display());
    }
    let progress = Some(stderr_progress());
    let threads = i32::try_from(threads).unwrap_or(i32::MAX);
    ffi::quantize(&q.input, &q.output, ftype, threads, progress)?;
    eprintln!("wrote {}", q.output.display());
    Ok(())
}
