//! `pmad._pmad`: the Rust side of the `pmad` Python package.
//!
//! The Python layer (`pmad/__init__.py`) checks numpy arrays and hands each image over as
//! `(bytes, height, width, format)`; here every buffer is checked again as an
//! [`ImageView`] (a bad one is a `ValueError` naming its index, never a crash), the detector
//! runs with the GIL released (other Python threads keep running, and several threads can
//! inspect at once: the detector is `Send + Sync`), and plain data goes back (maps as the
//! bytes of native-endian f32, which numpy views without a copy).

use pmad::data::{ImageView, PixelFormat, RgbImage};
use pmad::detector::Detector as Engine;
use pmad::detector::model_dir::ModelConfig;
use pmad::detector::pipeline::BATCH;
use pmad::{Error, ImageOrigin};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::path::PathBuf;
use std::sync::{PoisonError, RwLock};

create_exception!(
    _pmad,
    PmadError,
    PyException,
    "An error of the pmad engine (the message names the file or field)."
);
create_exception!(
    _pmad,
    ClassNotRegisteredError,
    PmadError,
    "The class asked for is not registered in the model directory."
);

/// A library error as the Python exception a caller can catch: bad images are
/// `ValueError`s, an unknown class a `ClassNotRegisteredError`, the rest `PmadError`s.
fn py_err(e: Error) -> PyErr {
    match e {
        Error::BadImage { .. } => PyValueError::new_err(e.to_string()),
        Error::ClassNotRegistered { .. } => ClassNotRegisteredError::new_err(e.to_string()),
        e => PmadError::new_err(e.to_string()),
    }
}

/// One image from Python: its packed pixel bytes, height, width and pixel format name.
type Frame<'py> = (Bound<'py, PyBytes>, usize, usize, String);

/// The frames as RGB images; a malformed one is an error naming its index.
fn to_images(frames: &[Frame]) -> Result<Vec<RgbImage>, Error> {
    frames
        .iter()
        .enumerate()
        .map(|(i, (bytes, h, w, format))| {
            let bad = |reason: String| Error::bad_image(ImageOrigin::Batch(i), reason);
            let format = match format.as_str() {
                "rgb" => PixelFormat::Rgb8,
                "bgr" => PixelFormat::Bgr8,
                "gray" => PixelFormat::Gray8,
                "rgba" => PixelFormat::Rgba8,
                f => return Err(bad(format!("unknown pixel format '{f}'"))),
            };
            let view = ImageView::packed(bytes.as_bytes(), *w, *h, format)
                .map_err(|e| bad(e.to_string()))?;
            Ok(view.to_rgb())
        })
        .collect()
}

/// What `inspect` returns to the Python layer: scores, thresholds, verdicts (one per image),
/// the maps' f32 bytes (`[n, size, size]`) and the map side.
type Scored<'py> = (Vec<f32>, Vec<f32>, Vec<bool>, Bound<'py, PyBytes>, usize);

/// What `register` returns: prototypes, images, thresholds by score name.
type Registered = (usize, usize, Vec<(String, f32)>);

/// A pmad model directory opened for inspection and registration (see the Python docs in
/// `pmad/__init__.py`, which wraps this class).
#[pyclass(frozen, module = "pmad._pmad")]
struct Detector {
    /// Inspections share the engine (read lock); a registration changes it (write lock).
    engine: RwLock<Engine>,
    model_dir: PathBuf,
}

impl Detector {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Engine> {
        self.engine.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[pymethods]
impl Detector {
    #[new]
    #[pyo3(signature = (model_dir, device = "cpu", weights = None))]
    fn new(
        py: Python<'_>,
        model_dir: PathBuf,
        device: &str,
        weights: Option<PathBuf>,
    ) -> PyResult<Self> {
        let device: pmad::detector::Device = device.parse().map_err(PyValueError::new_err)?;
        let dir = model_dir.clone();
        let engine = py
            .detach(move || {
                let mut e = Engine::open(&dir, weights.as_deref())?;
                e.set_device(device)?;
                Ok(e)
            })
            .map_err(py_err)?;
        Ok(Detector {
            engine: RwLock::new(engine),
            model_dir,
        })
    }

    /// Creates a new, empty model directory (default configuration: the distance score,
    /// no training needed); then register classes into it.
    #[staticmethod]
    fn create(model_dir: PathBuf) -> PyResult<()> {
        Engine::create(&model_dir, &ModelConfig::default()).map_err(py_err)
    }

    /// The registered classes, sorted.
    #[getter]
    fn classes(&self) -> PyResult<Vec<String>> {
        pmad::detector::class_store::list(&self.model_dir).map_err(py_err)
    }

    /// The model directory.
    #[getter]
    fn model_dir(&self) -> PathBuf {
        self.model_dir.clone()
    }

    /// The calibrated threshold of `class_name` for the model's default score.
    fn threshold(&self, py: Python<'_>, class_name: &str) -> PyResult<f32> {
        py.detach(|| {
            let engine = self.read();
            let model = engine.class(class_name)?;
            let path = pmad::detector::class_store::info_path(engine.dir(), class_name);
            model.info.threshold(engine.config.score, &path)
        })
        .map_err(py_err)
    }

    /// Scores the frames against `class_name`, in backbone batches, with the GIL released.
    /// Without `maps` no map is returned (empty bytes, size 0; a GPU sends down only scores).
    #[pyo3(signature = (class_name, frames, maps = true))]
    fn inspect<'py>(
        &self,
        py: Python<'py>,
        class_name: &str,
        frames: Vec<Frame<'py>>,
        maps: bool,
    ) -> PyResult<Scored<'py>> {
        let images = to_images(&frames).map_err(py_err)?;
        drop(frames);
        let results = py
            .detach(|| {
                let engine = self.read();
                let mut out = Vec::with_capacity(images.len());
                for (ci, chunk) in images.chunks(BATCH).enumerate() {
                    // Errors name the image by its index in the whole call.
                    let r = engine.inspect_batch_with(class_name, chunk, maps).map_err(
                        |e| match e {
                            Error::BadImage {
                                origin: ImageOrigin::Batch(i),
                                reason,
                            } => Error::bad_image(ImageOrigin::Batch(ci * BATCH + i), reason),
                            e => e,
                        },
                    )?;
                    out.extend(r);
                }
                Ok(out)
            })
            .map_err(py_err)?;
        let size = if maps {
            results.first().map_or(0, |r| r.map.size)
        } else {
            0
        };
        let mut map_bytes = Vec::with_capacity(results.len() * size * size * 4);
        for r in results.iter().filter(|_| maps) {
            map_bytes.extend(r.map.values.iter().flat_map(|v| v.to_ne_bytes()));
        }
        Ok((
            results.iter().map(|r| r.map.score).collect(),
            results.iter().map(|r| r.threshold).collect(),
            results.iter().map(|r| r.anomalous).collect(),
            PyBytes::new(py, &map_bytes),
            size,
        ))
    }

    /// Registers `class_name` from normal frames (at least 2), with the GIL released.
    /// Returns (number of prototypes, number of images, thresholds by score name).
    fn register(
        &self,
        py: Python<'_>,
        class_name: &str,
        frames: Vec<Frame<'_>>,
    ) -> PyResult<Registered> {
        let images = to_images(&frames).map_err(py_err)?;
        drop(frames);
        let info = py
            .detach(|| {
                let mut engine = self.engine.write().unwrap_or_else(PoisonError::into_inner);
                engine.register_images(class_name, &images)
            })
            .map_err(py_err)?;
        Ok((
            info.n_prototypes,
            info.n_train_images,
            info.thresholds.into_iter().collect(),
        ))
    }
}

/// Decodes an image file (PNG/JPEG/BMP/TIFF, any bit depth) as pmad does: returns the RGB
/// bytes, height and width.
#[pyfunction]
fn load_image<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<(Bound<'py, PyBytes>, usize, usize)> {
    let img = py.detach(|| pmad::data::load_rgb(&path)).map_err(py_err)?;
    Ok((PyBytes::new(py, &img.pixels), img.height, img.width))
}

/// The extension module.
#[pymodule]
fn _pmad(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Detector>()?;
    m.add_function(wrap_pyfunction!(load_image, m)?)?;
    m.add("PmadError", m.py().get_type::<PmadError>())?;
    m.add(
        "ClassNotRegisteredError",
        m.py().get_type::<ClassNotRegisteredError>(),
    )?;
    Ok(())
}
