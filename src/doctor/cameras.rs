//! The camera checks: every configured camera started as the daemon
//! starts it, and V4L2 devices probed for access and formats.

use super::*;
use crate::camera::V4l2Probe;

/// Starts every configured camera at once (so the wait is shared) and
/// reports, per camera, the first frame or the reason there was none.
pub(super) fn camera_checks(cfg: &Config) -> Vec<Check> {
    let cameras: Vec<Camera> = cfg
        .cameras
        .iter()
        .map(|c| Camera::spawn(c.clone()))
        .collect();
    let deadline = Instant::now() + WAIT;
    // An `mqtt` camera's frames come through the daemon's broker session,
    // which the doctor does not run: it is reported, not waited for.
    let mut results: Vec<Option<Result<(u32, u32), String>>> = cfg
        .cameras
        .iter()
        .map(|c| matches!(c.source, SourceConfig::Mqtt { .. }).then_some(Ok((0, 0))))
        .collect();
    loop {
        for (cam, result) in cameras.iter().zip(results.iter_mut()) {
            if let Some(Ok(_)) = result {
                continue;
            }
            *result = match cam.latest() {
                Ok(frame) => Some(Ok(frame.image.dimensions())),
                Err(CameraError::Unavailable { reason, .. }) => Some(Err(reason)),
                Err(CameraError::NoFrameYet { .. }) => None,
            };
        }
        let all_ok = results.iter().all(|r| matches!(r, Some(Ok(_))));
        if all_ok || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stop the capture threads before probing V4L2 devices again below.
    drop(cameras);
    cfg.cameras
        .iter()
        .zip(results)
        .map(|(c, result)| {
            let name = format!("camera {}", c.name);
            let kind = c.source.kind();
            if let SourceConfig::Mqtt { topic, max_age } = &c.source {
                let age = match max_age {
                    Some(a) => format!("; unavailable {a} s after the last frame"),
                    None => String::new(),
                };
                return Check::ok(
                    name,
                    format!(
                        "mqtt: frames published on {topic}{age} (they reach blipd serve \
                         through its broker session; see the broker check)"
                    ),
                );
            }
            let (where_, extra) = match &c.source {
                SourceConfig::File { path, .. } | SourceConfig::Folder { path, .. } => {
                    (format!(" {}", path.display()), None)
                }
                SourceConfig::V4l2 { device, .. } => (
                    format!(" {}", device.display()),
                    Some(crate::camera::probe_v4l2(device)),
                ),
                SourceConfig::Http { url, .. } | SourceConfig::Rtsp { url, .. } => {
                    (format!(" {}", crate::camera::redact_url(url)), None)
                }
                SourceConfig::TestPattern { .. } | SourceConfig::Mqtt { .. } => {
                    (String::new(), None)
                }
            };
            let probe_text = extra
                .as_ref()
                .and_then(|p| p.detail.as_ref())
                .map(|d| format!("; {d}"))
                .unwrap_or_default();
            match result {
                Some(Ok((w, h))) => {
                    Check::ok(name, format!("{kind}{where_}: {w}x{h} frame{probe_text}"))
                }
                other => {
                    let reason = match other {
                        Some(Err(reason)) => reason,
                        _ => format!("no frame within {} s", WAIT.as_secs()),
                    };
                    let fix = camera_fix(&c.name, &c.source, &reason, extra.as_ref());
                    Check::fail(name, format!("{kind}{where_}: {reason}{probe_text}"), fix)
                }
            }
        })
        .collect()
}

/// What a user can do about a camera that gave no frame.
fn camera_fix(
    name: &str,
    source: &SourceConfig,
    reason: &str,
    probe: Option<&V4l2Probe>,
) -> String {
    match source {
        SourceConfig::File { .. } => format!(
            "check `path` of [[camera]] {name:?}: it must be an existing, readable image file \
             (png, jpeg, bmp, webp) that this user can read"
        ),
        SourceConfig::Folder { .. } => format!(
            "check `path` of [[camera]] {name:?}: it must be a readable folder with at least \
             one png, jpeg, bmp or webp image"
        ),
        SourceConfig::Rtsp { .. } => format!(
            "check `url`, `username` and `password` of [[camera]] {name:?}: `ffprobe -rtsp_transport \
             tcp URL` on this machine shows what the camera offers (blipd needs H.264)"
        ),
        SourceConfig::Http { .. } if reason.contains("401") => format!(
            "check `username` and `password` (or `password_file`) of [[camera]] {name:?}: the \
             camera refused them"
        ),
        SourceConfig::Http { .. } => format!(
            "check `url` of [[camera]] {name:?}: `curl -v` on the same URL from this machine \
             shows what the camera answers (for https with a self-signed camera, set `ca_file`)"
        ),
        SourceConfig::TestPattern { .. } | SourceConfig::Mqtt { .. } => format!(
            "check the settings of [[camera]] {name:?} (`blipd check-config` names bad keys)"
        ),
        SourceConfig::V4l2 { .. } => {
            if let Some(fix) = probe.and_then(|p| p.fix.clone()) {
                fix
            } else if reason.contains("busy") {
                "another program streams from the camera (a running blipd too: stop it \
                 first); `fuser -v /dev/video*` shows which"
                    .into()
            } else if reason.contains("format") {
                format!(
                    "set `format` of [[camera]] {name:?} to one the device offers (mjpeg, yuyv \
                     or rgb24), or remove it to let blipd choose"
                )
            } else {
                format!(
                    "check `device` of [[camera]] {name:?}: `v4l2-ctl --list-devices` shows \
                     the capture nodes (some cameras expose metadata on a neighbouring node)"
                )
            }
        }
    }
}
