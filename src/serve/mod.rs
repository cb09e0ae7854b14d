//! `blipd serve`: wires cameras, the inference worker and the MQTT session.
//!
//! Threads: one per camera (capture), one inference worker (owns the model),
//! and a small tokio runtime for the MQTT session. Expensive set-up (model
//! load, graph optimisation) happens once, before the broker connection.

pub mod api;
pub mod broker;
pub mod cameras;
pub mod dedupe;
pub mod homeassistant;
pub mod intake;
pub mod queue;
pub mod session;
pub mod stats;
pub mod systemd;
pub mod watch;
pub mod worker;

use crate::bundle::default_bundle_dir;
use crate::config::Config;
use crate::mqtt::{self, Topics};
use crate::{Pipeline, PipelineError, PipelineOptions};
use cameras::Cameras;
use session::{Session, SessionConfig};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("loading the model: {0}")]
    Model(#[from] PipelineError),
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttError),
    #[error("embedded broker: {0}")]
    Broker(String),
    #[error("starting the runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error(transparent)]
    Api(#[from] api::ApiStartError),
}

/// Runs the daemon until SIGTERM/SIGINT. `on_ready` is called once the model
/// is loaded and the broker connection is up (systemd readiness). SIGHUP
/// re-reads `config_path` (see `Session::reload`).
pub fn serve(
    cfg: Config,
    config_path: Option<PathBuf>,
    on_ready: impl FnMut() + Send,
) -> Result<(), ServeError> {
    let systemd = systemd::Systemd::from_env();
    // The runtime and the SIGHUP handler come first: SIGHUP's default
    // action ends the process, and `systemctl reload` during the model
    // load (tens of seconds on a large bundle) must not kill the daemon.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let hup = rt
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) });
    crate::preprocess::set_max_pixels(cfg.limits.max_image_pixels);
    let device_id = cfg.device_id();
    let mut mqtt_cfg = cfg.mqtt.clone();
    let _broker = if mqtt_cfg.url.is_none() {
        let b = broker::start_or_reuse(&mqtt_cfg.embedded_listen).map_err(ServeError::Broker)?;
        mqtt_cfg.url = Some(b.url.clone());
        Some(b)
    } else {
        None
    };

    // The HTTP port is taken before the model loads, so a clash fails fast.
    // The zero-config demo serves on without it (a real Ollama may hold 11434).
    let api_listener = match &cfg.http.listen {
        Some(addr) => match api::bind(addr) {
            Ok(l) => Some(l),
            Err(e) if config_path.is_none() => {
                tracing::warn!(error = %e, "the demo's HTTP API is off");
                None
            }
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let api_key = api::read_api_key(&cfg)?;
    let model_dir = cfg.model.clone().unwrap_or_else(default_bundle_dir);
    let threads = cfg
        .threads
        .unwrap_or_else(|| crate::llm::default_threads() as usize);
    let opts = PipelineOptions::default()
        .with_threads(threads)
        .with_context(cfg.n_ctx)
        .with_llm_model(crate::llm::ffi::ModelParams {
            gpu_layers: cfg.gpu_layers.min(i32::MAX as u32) as i32,
            use_mmap: cfg.llm_mmap.unwrap_or(true),
            repack: cfg.llm_repack.unwrap_or(true),
        })
        // With a state_dir, files unchanged since their last full hash are
        // trusted: a restart does not read gigabytes again.
        .with_stamps(cfg.state_dir.as_ref().map(|d| d.join("verified.json")));
    systemd.status(&format!("loading model {}", model_dir.display()));
    tracing::info!(model = %model_dir.display(), "loading model");
    let pipeline = Pipeline::load(&model_dir, &opts)?;
    let model_name = model_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| model_dir.display().to_string());
    let default_params = pipeline.default_params();
    let llm_desc = pipeline.llm().description();
    let manifest = &pipeline.bundle().manifest;
    let (vision_precision, qformer_precision) = (
        manifest.vision.precision.clone(),
        manifest.qformer.precision.clone(),
    );

    let cameras = Arc::new(Cameras::start(&cfg.cameras));
    let topics = Topics::new(&mqtt_cfg, &device_id);
    let started = mqtt::wire::rfc3339(std::time::SystemTime::now());
    let loaded_at = started.clone();
    let info = {
        let (device_id, topics) = (device_id.clone(), topics.clone());
        let model = serde_json::json!({"name": model_name, "llm": llm_desc, "vision": vision_precision, "qformer": qformer_precision, "path": model_dir.display().to_string()});
        move |cfg: &Config| info(cfg, &device_id, &model, &topics, &started)
    };

    let stats = stats::SharedStats::new();
    let (published, running_config) = tokio::sync::watch::channel(Arc::new(cfg.clone()));
    let (ev_tx, ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let snapshot = Arc::new(Mutex::new(cfg.snapshot.clone()));
    let (queue, worker) = worker::spawn(
        pipeline,
        cameras.clone(),
        model_name.clone(),
        cfg.limits.queue,
        snapshot.clone(),
        ev_tx,
        systemd.liveness.clone(),
    )?;
    let api = api_listener.map(|l| {
        let state = api::ApiState {
            config: running_config,
            cameras: cameras.clone(),
            queue: queue.submitter(),
            stats: stats.clone(),
            default_params: default_params.clone(),
            liveness: systemd.liveness.clone(),
            model: crate::http::ollama::ModelInfo {
                bundle: model_name.clone(),
                llm: llm_desc.clone(),
                size: dir_size(&model_dir),
                loaded_at,
            },
            api_key,
            next_id: Default::default(),
        };
        (l, Arc::new(state))
    });
    let client_id = mqtt_cfg
        .client_id
        .clone()
        .unwrap_or_else(|| format!("blipd-{device_id}"));
    let options = mqtt::options(&mqtt_cfg, &client_id, &topics)?;
    let dedupe = dedupe::Dedupe::new(cfg.limits.remember_answered, cfg.state_dir.clone());
    let session_cfg = SessionConfig {
        topics: topics.clone(),
        config: cfg.clone(),
        config_path,
        cameras: cameras.clone(),
        snapshot,
        device_id: device_id.clone(),
        model_name,
        default_params,
        info: Box::new(info),
        shutdown_grace: Duration::from_secs(30),
        systemd: systemd.clone(),
        serving_status: String::new(),
        stats,
        published,
    };
    systemd.status(&format!(
        "connecting to {}",
        mqtt_cfg.url.as_deref().unwrap_or_default()
    ));
    tracing::info!(
        device_id,
        client_id,
        broker = mqtt_cfg.url.as_deref().unwrap_or_default(),
        ask = %topics.subscribe,
        "serving"
    );

    let mut on_ready = on_ready;
    let mut ready_sent = false;
    rt.block_on(async move {
        if let Some((listener, state)) = api {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, auth = state.api_key.is_some(), "HTTP API (Ollama, OpenAI) listening");
            }
            tokio::spawn(api::run(listener, state));
        }
        let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, 1024);
        let session = Session::new(client, session_cfg, queue, dedupe);
        let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(hangups(hup, reload_tx));
        session
            .run(eventloop, ev_rx, shutdown_signal(), reload_rx, || {
                if !ready_sent {
                    ready_sent = true;
                    on_ready();
                }
            })
            .await
    });
    // The session dropped the queue: the worker ends after its job in hand.
    // If that job outlived the grace period, exit anyway: its request is
    // unacknowledged and the broker redelivers it at the next start.
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while !worker.is_finished() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    if worker.is_finished() {
        let _ = worker.join();
    }
    cameras.clear();
    tracing::info!("stopped");
    Ok(())
}

/// The retained info message: what this daemon runs and how to reach it.
fn info(
    cfg: &Config,
    device_id: &str,
    model: &serde_json::Value,
    topics: &Topics,
    started: &str,
) -> String {
    let cameras: Vec<_> = cfg
        .cameras
        .iter()
        .map(|c| serde_json::json!({"name": c.name, "source": c.source}))
        .collect();
    let watches: Vec<_> = cfg
        .watches
        .iter()
        .map(|w| serde_json::json!({"name": w.name, "camera": cfg.watch_camera(w), "prompt": w.prompt, "topic": topics.watch(&w.name)}))
        .collect();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "device_id": device_id,
        "model": model,
        "cameras": cameras,
        "default_camera": cfg.default_camera(),
        "watches": watches,
        "limits": cfg.limits,
        "http": cfg.http.listen,
        "topics": {
            "ask": topics.ask,
            "answer": format!("{}/{{id}}", topics.answer_prefix),
            "status": topics.status,
            "stats": topics.stats,
            "snapshot": topics.snapshot("{id}"),
            "watch": topics.watch("{name}"),
        },
        "started": started,
    })
    .to_string()
}

/// Bytes of the files in a bundle directory (what `/api/tags` reports).
fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Forwards SIGHUP to the session as reload requests.
async fn hangups(
    hup: std::io::Result<tokio::signal::unix::Signal>,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let mut hup = match hup {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot install a SIGHUP handler; config reload is off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        if tx.send(()).is_err() {
            return;
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
