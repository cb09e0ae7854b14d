//! Camera stage with real threads and real files: frames flow, failures
//! become `Unavailable` without touching other cameras, sources recover, and
//! stopping is prompt.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blipd::camera::{
    Camera, CameraConfig, CameraError, CameraState, Frame, PatternKind, SourceConfig,
};
use image::RgbImage;

fn cam(name: &str, source: SourceConfig) -> CameraConfig {
    CameraConfig {
        name: name.into(),
        source,
    }
}

fn pattern(fps: f32) -> SourceConfig {
    SourceConfig::TestPattern {
        width: 160,
        height: 120,
        fps,
        pattern: PatternKind::Bars,
        seed: 0,
        interval: 10.0,
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
fn wait_for<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn first_frame(camera: &Camera) -> Frame {
    wait_for(Duration::from_secs(5), || camera.latest().ok())
        .unwrap_or_else(|| panic!("no frame within 5 s: {:?}", camera.status()))
}

fn unavailable_reason(camera: &Camera) -> Option<String> {
    match camera.latest() {
        Err(CameraError::Unavailable {
            camera: name,
            reason,
        }) => {
            assert_eq!(name, camera.name());
            Some(reason)
        }
        _ => None,
    }
}

fn solid(w: u32, h: u32, rgb: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(w, h, image::Rgb(rgb))
}

fn gradient(w: u32, h: u32, k: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x as u8).wrapping_mul(k), (y as u8).wrapping_mul(3), k])
    })
}

/// Writes atomically (hidden temp name + rename), as a well-behaved
/// producer does, so a camera never sees a half-written file.
fn save(img: &RgbImage, path: &Path) {
    let name = path.file_name().unwrap().to_str().unwrap();
    let tmp = path.with_file_name(format!(".tmp-{name}"));
    img.save(&tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn test_pattern_delivers_distinct_frames_in_order() {
    let camera = Camera::spawn(cam("bars", pattern(20.0)));
    assert_eq!(camera.name(), "bars");
    let first = first_frame(&camera);
    assert_eq!(first.image.dimensions(), (160, 120));

    let mut frames = vec![first];
    let deadline = Instant::now() + Duration::from_secs(5);
    while frames.len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let f = camera.latest().unwrap();
        if f.seq != frames.last().unwrap().seq {
            frames.push(f);
        }
    }
    assert_eq!(frames.len(), 4, "test pattern at 20 fps must move on");
    for pair in frames.windows(2) {
        assert!(pair[1].seq > pair[0].seq, "seq must increase");
        assert!(pair[1].captured >= pair[0].captured);
        assert_ne!(
            *pair[1].image, *pair[0].image,
            "consecutive frames must differ"
        );
    }

    let status = camera.status();
    assert_eq!(status.name, "bars");
    assert_eq!(status.kind, "test_pattern");
    assert_eq!(status.state, CameraState::Ok);
    assert!(status.frames_captured >= 4);
    assert!(status.last_frame_unix_ms.is_some());
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["state"], "ok");
    assert_eq!(json["kind"], "test_pattern");
    camera.stop();
}

#[test]
fn newest_frame_only_no_backlog() {
    let camera = Camera::spawn(cam("fresh", pattern(20.0)));
    first_frame(&camera);
    std::thread::sleep(Duration::from_millis(600));
    let captured_before = camera.status().frames_captured;
    let frame = camera.latest().unwrap();
    assert!(
        captured_before >= 8,
        "{captured_before} frames in 600 ms at 20 fps"
    );
    // The newest frame, not the oldest unread one.
    assert!(
        frame.seq + 1 >= captured_before,
        "latest seq {} but {captured_before} frames were captured",
        frame.seq
    );
    let age = frame.captured.elapsed().unwrap_or_default();
    assert!(
        age < Duration::from_millis(500),
        "newest frame is {age:?} old"
    );
}

#[test]
fn no_frame_yet_right_after_spawn() {
    // A large pattern takes the capture thread a while to draw; the caller
    // is not blocked by it and sees the starting state.
    let camera = Camera::spawn(cam("big", SourceConfig::test_pattern(4096, 4096, 1.0)));
    let err = camera.latest().unwrap_err();
    assert!(matches!(err, CameraError::NoFrameYet { .. }), "{err}");
    assert!(err.to_string().contains("big"), "{err}");
    assert_eq!(camera.status().state, CameraState::Starting);
    first_frame(&camera);
}

#[test]
fn file_camera_follows_the_file_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.png");
    save(&gradient(64, 48, 3), &path);

    let file_cam = Camera::spawn(cam(
        "snap",
        SourceConfig::File {
            path: path.clone(),
            fps: 20.0,
        },
    ));
    let other = Camera::spawn(cam("other", pattern(20.0)));

    let frame = first_frame(&file_cam);
    assert_eq!(*frame.image, blipd::preprocess::load_rgb(&path).unwrap());
    first_frame(&other);

    // Removed: unavailable within a few seconds, naming the file.
    std::fs::remove_file(&path).unwrap();
    let reason = wait_for(Duration::from_secs(3), || unavailable_reason(&file_cam))
        .expect("a removed file must make the camera unavailable");
    assert!(
        reason.contains(&path.display().to_string()),
        "reason should name the file: {reason}"
    );
    let status = file_cam.status();
    assert_eq!(status.state, CameraState::Unavailable);
    assert_eq!(status.last_error.as_deref(), Some(reason.as_str()));

    // The other camera is unaffected: still fresh frames.
    let a = other.latest().unwrap();
    let b = wait_for(Duration::from_secs(2), || {
        other.latest().ok().filter(|f| f.seq > a.seq)
    })
    .expect("the other camera must keep delivering");
    assert!(b.seq > a.seq);

    // Back (with new content): recovers and shows the new picture.
    save(&gradient(64, 48, 7), &path);
    let want = blipd::preprocess::load_rgb(&path).unwrap();
    let frame = wait_for(Duration::from_secs(5), || file_cam.latest().ok())
        .expect("the camera must recover when the file is back");
    assert_eq!(*frame.image, want);
    assert_eq!(file_cam.status().state, CameraState::Ok);

    // Replaced in place with a newer picture: noticed on the next ticks.
    save(&solid(32, 32, [10, 200, 30]), &path);
    let want = blipd::preprocess::load_rgb(&path).unwrap();
    wait_for(Duration::from_secs(3), || {
        file_cam.latest().ok().filter(|f| *f.image == want)
    })
    .expect("a replaced file must be picked up");

    // Corrupt: unavailable with the decoder's reason; fixed: recovers.
    std::fs::write(&path, b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let reason = wait_for(Duration::from_secs(3), || unavailable_reason(&file_cam))
        .expect("a corrupt file must make the camera unavailable");
    assert!(reason.contains("snapshot.png"), "{reason}");
    save(&gradient(64, 48, 5), &path);
    wait_for(Duration::from_secs(5), || file_cam.latest().ok())
        .expect("the camera must recover from a corrupt file");

    file_cam.stop();
    other.stop();
}

#[test]
fn file_rewritten_in_place_does_not_flap() {
    // A producer that overwrites the file in place (no rename) exposes a
    // half-written file for a moment; the camera must ride over it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.png");
    let mut png = Vec::new();
    gradient(200, 150, 9)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(&path, &png).unwrap();
    let camera = Camera::spawn(cam(
        "live",
        SourceConfig::File {
            path: path.clone(),
            fps: 20.0,
        },
    ));
    first_frame(&camera);
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            for _ in 0..8 {
                let mut f = std::fs::File::create(&path).unwrap();
                f.write_all(&png[..png.len() / 2]).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(20));
                f.write_all(&png[png.len() / 2..]).unwrap();
                drop(f);
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    while !writer.is_finished() {
        assert_ne!(
            camera.status().state,
            CameraState::Unavailable,
            "{:?}",
            camera.status()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    writer.join().unwrap();
    assert!(camera.latest().is_ok());
}

#[test]
fn camera_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Camera>();
    assert_send_sync::<Frame>();
}

#[test]
fn folder_loops_in_name_order_and_picks_up_new_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Written out of order; distinct pictures; plus files to ignore.
    save(&solid(16, 16, [0, 0, 255]), &d.join("c.jpg"));
    save(&solid(16, 16, [255, 0, 0]), &d.join("a.png"));
    save(&solid(16, 16, [0, 255, 0]), &d.join("b.bmp"));
    std::fs::write(d.join("notes.txt"), "not an image").unwrap();
    std::fs::write(d.join(".hidden.png"), "hidden").unwrap();
    std::fs::create_dir(d.join("sub.png")).unwrap();

    let names = ["a.png", "b.bmp", "c.jpg", "d.webp"];
    let expected: Vec<RgbImage> = names[..3]
        .iter()
        .map(|n| blipd::preprocess::load_rgb(&d.join(n)).unwrap())
        .collect();
    let which = |img: &RgbImage, known: &[RgbImage]| -> usize {
        known
            .iter()
            .position(|e| e == img)
            .unwrap_or_else(|| panic!("frame is none of the folder's images"))
    };

    let camera = Camera::spawn(cam(
        "album",
        SourceConfig::Folder {
            path: d.to_path_buf(),
            interval: 0.05,
        },
    ));
    // Record the image shown for each seq over ~2 loops.
    let mut seen: Vec<(u64, usize)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 7 && Instant::now() < deadline {
        if let Ok(f) = camera.latest() {
            if seen.last().is_none_or(|(s, _)| *s != f.seq) {
                seen.push((f.seq, which(&f.image, &expected)));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(seen.len() >= 7, "folder camera too slow: {seen:?}");
    // Frame seq n shows image n mod 3 (seq 0 is a.png).
    for (seq, idx) in &seen {
        assert_eq!(*idx as u64, seq % 3, "name order broken: {seen:?}");
    }

    // A new file dropped in joins the loop, after c.jpg.
    save(&solid(16, 16, [255, 255, 0]), &d.join(names[3]));
    let mut known = expected.clone();
    known.push(blipd::preprocess::load_rgb(&d.join(names[3])).unwrap());
    let mut order = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last_seq = None;
    while order.len() < 10 && Instant::now() < deadline {
        if let Ok(f) = camera.latest() {
            if last_seq != Some(f.seq) {
                last_seq = Some(f.seq);
                order.push(which(&f.image, &known));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pos = order
        .iter()
        .position(|&i| i == 3)
        .unwrap_or_else(|| panic!("new file never shown: {order:?}"));
    assert!(pos > 0, "{order:?}");
    assert_eq!(order[pos - 1], 2, "d.webp must follow c.jpg: {order:?}");
    if let Some(&next) = order.get(pos + 1) {
        assert_eq!(next, 0, "the loop wraps to a.png: {order:?}");
    }

    // Emptied: unavailable, with a reason saying so.
    for n in names {
        std::fs::remove_file(d.join(n)).unwrap();
    }
    let reason = wait_for(Duration::from_secs(3), || unavailable_reason(&camera))
        .expect("an empty folder must make the camera unavailable");
    assert!(reason.contains("no images"), "{reason}");
    camera.stop();
}

#[test]
fn missing_folder_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("does-not-exist");
    let camera = Camera::spawn(cam(
        "gone",
        SourceConfig::Folder {
            path: path.clone(),
            interval: 0.05,
        },
    ));
    let reason = wait_for(Duration::from_secs(3), || unavailable_reason(&camera))
        .expect("a missing folder must make the camera unavailable");
    assert!(reason.contains("does-not-exist"), "{reason}");
    assert_eq!(camera.status().kind, "folder");
}

#[test]
fn missing_v4l2_device_is_unavailable_and_stops_promptly() {
    let camera = Camera::spawn(cam(
        "door",
        SourceConfig::V4l2 {
            device: "/dev/video99".into(),
            width: 640,
            height: 480,
            fps: 5,
            format: None,
        },
    ));
    let reason = wait_for(Duration::from_secs(3), || unavailable_reason(&camera))
        .expect("a missing device must make the camera unavailable");
    assert!(reason.contains("/dev/video99"), "{reason}");
    let status = camera.status();
    assert_eq!(status.kind, "v4l2");
    assert_eq!(status.state, CameraState::Unavailable);
    assert_eq!(status.frames_captured, 0);
    assert!(status.last_frame_unix_ms.is_none());
    let err = camera.latest().unwrap_err().to_string();
    assert!(
        err.contains("door") && err.contains("/dev/video99"),
        "{err}"
    );

    // Stopping during the backoff wait must not sit out the backoff.
    std::thread::sleep(Duration::from_millis(700));
    let t = Instant::now();
    camera.stop();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        t.elapsed()
    );
}

#[test]
fn stop_interrupts_a_long_frame_period() {
    let camera = Camera::spawn(cam("slow", pattern(0.1)));
    first_frame(&camera);
    // The thread now sleeps ~10 s until the next tick.
    let t = Instant::now();
    drop(camera);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        t.elapsed()
    );
}

#[test]
fn invalid_config_reports_instead_of_failing() {
    let camera = Camera::spawn(cam("bad name!", pattern(5.0)));
    let status = camera.status();
    assert_eq!(status.state, CameraState::Unavailable);
    let err = status.last_error.unwrap();
    assert!(
        err.contains("invalid configuration") && err.contains("`name`"),
        "{err}"
    );
}

/// The Rust scene generator against `models/scenes.py` (goldens/scenes.json):
/// the same shapes from the same seed, and the same pixels at every size.
#[test]
fn scenes_match_the_python_generator_pixel_for_pixel() {
    use blipd::camera::scene::{Scene, SplitMix64};
    use sha2::{Digest, Sha256};

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/goldens/scenes.json");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut rng = SplitMix64::new(1234567);
    for want in g["splitmix64_1234567"].as_array().unwrap() {
        assert_eq!(rng.next_u64(), want.as_u64().unwrap());
    }
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let seed = case["seed"].as_u64().unwrap();
        let scene = Scene::sample(seed);
        let bg: Vec<u64> = scene.background.iter().map(|&v| u64::from(v)).collect();
        assert_eq!(serde_json::json!(bg), case["background"], "seed {seed}");
        assert_eq!(scene.noisy, case["noisy"].as_bool().unwrap(), "seed {seed}");
        let shapes = case["shapes"].as_array().unwrap();
        assert_eq!(scene.shapes.len(), shapes.len(), "seed {seed}");
        for (s, w) in scene.shapes.iter().zip(shapes) {
            assert_eq!(s.kind.as_str(), w["kind"], "seed {seed}");
            assert_eq!(s.color.as_str(), w["color"], "seed {seed}");
            // Exact: the same float64 operations in the same order.
            let bits: Vec<u64> = [s.cx, s.cy, s.r].iter().map(|v| v.to_bits()).collect();
            assert_eq!(serde_json::json!(bits), w["bits"], "seed {seed}");
        }
        assert_eq!(scene.describe(), case["describe"], "seed {seed}");
        for r in case["renders"].as_array().unwrap() {
            let (w, h) = (r["width"].as_u64().unwrap(), r["height"].as_u64().unwrap());
            let img = scene.render(w as u32, h as u32);
            let hash: String = Sha256::digest(img.as_raw())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(hash, r["sha256"], "seed {seed} at {w}x{h}");
        }
    }
}

/// The default test pattern shows scene `seed`, `seed + 1`, ... each for
/// `interval` seconds' worth of frames.
#[test]
fn scene_pattern_shows_the_seeded_scenes_in_turn() {
    use blipd::camera::scene::Scene;

    let camera = Camera::spawn(cam(
        "scenes",
        SourceConfig::TestPattern {
            width: 96,
            height: 72,
            fps: 20.0,
            pattern: PatternKind::Scenes,
            seed: 40,
            interval: 0.1,
        },
    ));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 6 && Instant::now() < deadline {
        let f = match camera.latest() {
            Ok(f) => f,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        if seen.last().map(|(s, _)| *s) != Some(f.seq) {
            seen.push((f.seq, f.image.clone()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    camera.stop();
    assert!(seen.len() >= 6, "camera must keep delivering frames");
    for (seq, img) in &seen {
        // Two frames per scene (0.1 s at 20 fps).
        let want = Scene::sample(40 + seq / 2).render(96, 72);
        assert!(**img == want, "frame {seq} must be scene {}", 40 + seq / 2);
    }
}
