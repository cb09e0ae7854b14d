//! Where the rewrite's tensors come from and go to: the source graph's
//! data (inline or in external files, which must lie inside its folder) and
//! the new graph's one external data file, written in order.

use super::RewriteError;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use tract_onnx::pb::{tensor_proto::DataLocation, StringStringEntryProto, TensorProto};

/// Tensors at least this large go to the external data file (onnx's own
/// default threshold when it saves with external data).
const EXTERNAL_THRESHOLD: usize = 1024;

pub(super) fn is_external(t: &TensorProto) -> bool {
    t.data_location == Some(DataLocation::External as i32)
}

fn entry<'a>(t: &'a TensorProto, key: &str) -> Option<&'a str> {
    t.external_data
        .iter()
        .find(|e| e.key == key)
        .map(|e| e.value.as_str())
}

/// Reads tensor data from the source graph and its external files, which
/// must lie inside the graph's folder (as tract requires too).
pub(super) struct Reader {
    dir: PathBuf,
    graph: PathBuf,
    open: Option<(PathBuf, File)>,
}

impl Reader {
    pub(super) fn new(dir: PathBuf, graph: PathBuf) -> Self {
        Self {
            dir,
            graph,
            open: None,
        }
    }

    fn bad(&self, t: &TensorProto, message: impl Into<String>) -> RewriteError {
        RewriteError::Tensor {
            path: self.graph.clone(),
            tensor: t.name.clone(),
            message: message.into(),
        }
    }

    fn elements(&self, t: &TensorProto) -> Result<usize, RewriteError> {
        t.dims.iter().try_fold(1usize, |n, &d| {
            usize::try_from(d)
                .ok()
                .and_then(|d| n.checked_mul(d))
                .ok_or_else(|| self.bad(t, format!("bad dims {:?}", t.dims)))
        })
    }

    /// The f32 values of a FLOAT tensor, wherever they are stored.
    pub(super) fn f32_values(&mut self, t: &TensorProto) -> Result<Vec<f32>, RewriteError> {
        let n = self.elements(t)?;
        if !t.float_data.is_empty() {
            if t.float_data.len() != n {
                return Err(self.bad(t, "float_data does not match its dims"));
            }
            return Ok(t.float_data.clone());
        }
        let raw = self.raw(t)?;
        if n.checked_mul(4) != Some(raw.len()) {
            return Err(self.bad(t, format!("{} bytes of data for {n} f32 values", raw.len())));
        }
        Ok(raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// The raw bytes of a tensor stored as `raw_data` or externally.
    pub(super) fn raw(&mut self, t: &TensorProto) -> Result<Vec<u8>, RewriteError> {
        if !is_external(t) {
            return Ok(t.raw_data.clone());
        }
        let location = entry(t, "location").ok_or_else(|| self.bad(t, "no location"))?;
        let rel = Path::new(location);
        if !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(self.bad(
                t,
                format!("external data {location:?} is not inside the graph's folder"),
            ));
        }
        let number = |key: &str| -> Result<Option<u64>, RewriteError> {
            entry(t, key)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| self.bad(t, format!("bad {key} {v:?}")))
                })
                .transpose()
        };
        let offset = number("offset")?.unwrap_or(0);
        let length = number("length")?;
        let path = self.dir.join(rel);
        let io = |source| RewriteError::Io {
            path: path.clone(),
            source,
        };
        // As tract does: a symlink inside the folder must not lead out of it.
        let inside = match (path.canonicalize(), self.dir.canonicalize()) {
            (Ok(p), Ok(d)) => p.starts_with(d),
            (Err(e), _) | (_, Err(e)) => return Err(io(e)),
        };
        if !inside {
            return Err(self.bad(
                t,
                format!("external data {location:?} leads outside the graph's folder"),
            ));
        }
        // Consecutive weights mostly share one data file: keep it open.
        let f = match &mut self.open {
            Some((p, f)) if *p == path => f,
            slot => {
                &mut slot
                    .insert((path.clone(), File::open(&path).map_err(io)?))
                    .1
            }
        };
        let size = f.metadata().map_err(io)?.len();
        let length = length.unwrap_or(size.saturating_sub(offset));
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(self.bad(
                t,
                format!("bytes {offset}+{length} lie past the end of {location} ({size} bytes)"),
            ));
        }
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut buf = vec![0u8; length as usize];
        f.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }
}

/// The new graph's external data file, written in order; removed again
/// unless [`DataFile::finish`] is reached (a refused graph leaves nothing).
pub(super) struct DataFile {
    path: PathBuf,
    name: String,
    out: BufWriter<File>,
    offset: u64,
    done: bool,
}

impl Drop for DataFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl DataFile {
    pub(super) fn create(path: &Path, name: String) -> Result<Self, RewriteError> {
        let f = File::create(path).map_err(|source| RewriteError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            name,
            out: BufWriter::with_capacity(1 << 20, f),
            offset: 0,
            done: false,
        })
    }

    /// Stores `raw` as `t`'s data: inline when small, else appended here.
    pub(super) fn store(&mut self, t: &mut TensorProto, raw: Vec<u8>) -> Result<(), RewriteError> {
        if raw.len() < EXTERNAL_THRESHOLD {
            t.raw_data = raw;
            return Ok(());
        }
        // Each tensor starts on a 4 KiB boundary (ONNX's external data
        // format allows the gap): a reader may map it page-aligned.
        let pad = (4096 - self.offset % 4096) % 4096;
        let io = |source| RewriteError::Io {
            path: self.path.clone(),
            source,
        };
        self.out.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        self.offset += pad;
        self.out.write_all(&raw).map_err(io)?;
        let kv = |k: &str, v: String| StringStringEntryProto {
            key: k.into(),
            value: v,
        };
        t.raw_data.clear();
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = vec![
            kv("location", self.name.clone()),
            kv("offset", self.offset.to_string()),
            kv("length", raw.len().to_string()),
        ];
        self.offset += raw.len() as u64;
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<(), RewriteError> {
        let io = |source| RewriteError::Io {
            path: self.path.clone(),
            source,
        };
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_all().map_err(io)?;
        self.done = true;
        Ok(())
    }
}
