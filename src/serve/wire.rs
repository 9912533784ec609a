//! What travels over the wire: request images in (raw PNG/JPEG bytes, or a JSON list of
//! base64 strings), decoded with size limits; results out as JSON (score, threshold,
//! verdict and, on request, the anomaly map at the image's own size, as in `pmad inspect`).
//! Pure functions, called on blocking threads (decoding and encoding are compute).

use crate::data::RgbImage;
use crate::detector::Inspection;
use crate::detector::outputs;
use crate::error::{Error, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

/// Largest image side accepted, in pixels: a PNG header can claim any size, and the decoder
/// would allocate it before noticing the data is short.
pub const MAX_SIDE: u32 = 16_384;
/// Largest decoder allocation for one image (bytes).
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

/// The anomaly map in a response, as asked with `?map=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapFormat {
    /// 16-bit grayscale PNG (base64), `map = offset + png / 65535 * scale`.
    Png,
    /// Float array, row-major `height x width`.
    F32,
}

/// The JSON body of a batch inspection or a registration: `{"images": ["<base64>", ...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageList {
    pub images: Vec<String>,
}

/// Parses `{"images": [...]}` and decodes each base64 string to bytes (not yet to pixels).
/// At least one image and at most `max` images; errors name the image's index.
pub fn parse_image_list(body: &[u8], max: usize) -> Result<Vec<Vec<u8>>> {
    let list: ImageList = serde_json::from_slice(body).map_err(|e| {
        Error::invalid(format!(
            "request body: expected {{\"images\": [\"<base64>\", ...]}}: {e}"
        ))
    })?;
    if list.images.is_empty() {
        return Err(Error::invalid("request body: \"images\" is empty"));
    }
    if list.images.len() > max {
        return Err(Error::invalid(format!(
            "request body: {} images, at most {max} per request",
            list.images.len()
        )));
    }
    list.images
        .iter()
        .enumerate()
        .map(|(i, s)| {
            B64.decode(s.trim())
                .map_err(|e| Error::invalid(format!("image {i} of the request: bad base64: {e}")))
        })
        .collect()
}

/// Decodes one image of a request to 8-bit RGB, exactly as [`crate::data::load_rgb`] does
/// for a file, but with [`MAX_SIDE`] and [`MAX_DECODE_BYTES`] enforced. `index` names it.
pub fn decode(bytes: &[u8], index: usize) -> Result<RgbImage> {
    let what = format!("image {index} of the request");
    let mut reader = ::image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::format(&what, format!("cannot read image: {e}")))?;
    if reader.format().is_none() {
        return Err(Error::format(
            &what,
            "not an image (PNG, JPEG, BMP or TIFF expected)",
        ));
    }
    let mut limits = ::image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| Error::format(&what, format!("cannot decode image: {e}")))?;
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::format(&what, "image has no pixels"));
    }
    Ok(RgbImage {
        width: w,
        height: h,
        pixels: rgb.into_raw(),
    })
}

/// One image's result as JSON: `score`, `threshold`, `verdict`, the image's `width` and
/// `height` and, with `map`, the anomaly map at that size. A non-finite score or map value
/// is an error (the request gets 500), never a verdict.
pub fn result_json(
    class: &str,
    index: usize,
    img: &RgbImage,
    r: &Inspection,
    map: Option<MapFormat>,
) -> Result<serde_json::Value> {
    let non_finite = |value: f32| Error::NonFinite {
        class: class.to_string(),
        image: index,
        stage: "map",
        value,
    };
    if !r.map.score.is_finite() {
        return Err(non_finite(r.map.score));
    }
    if !r.threshold.is_finite() {
        return Err(Error::invalid(format!(
            "class '{class}': non-finite threshold {}",
            r.threshold
        )));
    }
    let mut v = serde_json::json!({
        "score": r.map.score,
        "threshold": r.threshold,
        "verdict": if r.anomalous { "anomalous" } else { "normal" },
        "width": img.width,
        "height": img.height,
    });
    let Some(fmt) = map else {
        return Ok(v);
    };
    if let Some(&bad) = r.map.values.iter().find(|x| !x.is_finite()) {
        return Err(non_finite(bad));
    }
    let (w, h) = (img.width, img.height);
    let up = outputs::upsample_map(&r.map, w, h);
    v["map"] = match fmt {
        MapFormat::Png => {
            let p = outputs::png16_map(&up, w, h)?;
            serde_json::json!({
                "format": "png16",
                "width": w,
                "height": h,
                "scale": p.scale,
                "offset": p.offset,
                "data": B64.encode(&p.bytes),
            })
        }
        MapFormat::F32 => serde_json::json!({
            "format": "f32",
            "width": w,
            "height": h,
            "values": up,
        }),
    };
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = ::image::RgbImage::from_fn(w, h, |x, y| ::image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut out),
            ::image::ImageFormat::Png,
        )
        .unwrap();
        out
    }

    #[test]
    fn decodes_like_load_rgb_and_refuses_garbage_with_the_index() {
        let bytes = png(5, 3);
        let a = decode(&bytes, 0).unwrap();
        let b = crate::data::image::decode_rgb(&bytes, "x".as_ref()).unwrap();
        assert_eq!((a.width, a.height), (5, 3));
        assert_eq!(a.pixels, b.pixels);
        let e = decode(b"not an image", 3).unwrap_err().to_string();
        assert!(e.contains("image 3 of the request"), "{e}");
        // A truncated PNG: its header is fine, its data is not.
        let e = decode(&bytes[..bytes.len() / 2], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("image 1 of the request"), "{e}");
    }

    #[test]
    fn a_non_finite_score_or_map_is_an_error_never_a_verdict() {
        use crate::detector::scoring::AnomalyMap;
        let img = RgbImage {
            width: 4,
            height: 2,
            pixels: vec![0; 24],
        };
        let insp = |score: f32, values: Vec<f32>| Inspection {
            map: AnomalyMap {
                size: 2,
                values,
                score,
            },
            threshold: 1.0,
            anomalous: score > 1.0,
        };
        let ok = result_json("c", 0, &img, &insp(0.5, vec![0.1, 0.2, 0.3, 0.5]), None).unwrap();
        assert_eq!(ok["verdict"], "normal");
        let f = result_json(
            "c",
            0,
            &img,
            &insp(0.5, vec![0.1, 0.2, 0.3, 0.5]),
            Some(MapFormat::F32),
        )
        .unwrap();
        assert_eq!(f["map"]["values"].as_array().unwrap().len(), 8);
        let e = result_json("c", 2, &img, &insp(f32::NAN, vec![0.0; 4]), None).unwrap_err();
        assert!(matches!(e, Error::NonFinite { image: 2, .. }), "{e}");
        // A NaN pixel below a finite score is caught when the map is asked for.
        let e = result_json(
            "c",
            0,
            &img,
            &insp(0.5, vec![0.1, f32::NAN, 0.3, 0.5]),
            Some(MapFormat::Png),
        )
        .unwrap_err();
        assert!(e.to_string().contains("non-finite"), "{e}");
    }

    #[test]
    fn image_lists_are_bounded_and_errors_name_the_image() {
        let ok = format!("{{\"images\": [\"{}\"]}}", B64.encode(b"abc"));
        assert_eq!(
            parse_image_list(ok.as_bytes(), 4).unwrap(),
            vec![b"abc".to_vec()]
        );
        let e = parse_image_list(b"{\"images\": []}", 4).unwrap_err();
        assert!(e.to_string().contains("empty"));
        let e = parse_image_list(b"{\"images\": [\"a\", \"!!\"]}", 4).unwrap_err();
        assert!(e.to_string().contains("image 0"), "{e}");
        let e = parse_image_list(b"{\"images\": [\"\", \"\", \"\"]}", 2).unwrap_err();
        assert!(e.to_string().contains("at most 2"), "{e}");
        let e = parse_image_list(b"[1, 2]", 2).unwrap_err();
        assert!(e.to_string().contains("expected"), "{e}");
    }
}
