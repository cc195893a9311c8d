//! Thumbnails in the Service Worker, made by the browser: `createImageBitmap`
//! decodes (in native code, off the wasm's heap, every format the browser
//! shows) and an `OffscreenCanvas` scales and encodes. Several times faster
//! than decoding in wasm, and a megabyte of decoders less to download.

use js_sys::{Array, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, ImageBitmap, ImageEncodeOptions, OffscreenCanvas, OffscreenCanvasRenderingContext2d};

use crate::core::{
    service::media::{Fit, MediaError},
    Thumbnailer,
};

pub struct BrowserThumbnailer;

#[async_trait::async_trait(?Send)]
impl Thumbnailer for BrowserThumbnailer {
    async fn thumbnail(&self, file: &[u8], width: u32, height: u32, fit: Fit) -> Result<(String, Vec<u8>), MediaError> {
        make(file, width.max(1), height.max(1), fit)
            .await
            .map_err(|err| MediaError::NotAnImage(err.as_string().unwrap_or_else(|| format!("{err:?}"))))
    }
}

/// JPEG stays JPEG; the rest becomes PNG, which keeps transparency.
async fn make(file: &[u8], width: u32, height: u32, fit: Fit) -> Result<(String, Vec<u8>), JsValue> {
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let blob = Blob::new_with_u8_array_sequence(&Array::of1(&Uint8Array::from(file)))?;
    let bitmap: ImageBitmap = JsFuture::from(global.create_image_bitmap_with_blob(&blob)?).await?.unchecked_into();
    let (w, h) = (f64::from(bitmap.width()), f64::from(bitmap.height()));
    let (box_w, box_h) = (f64::from(width), f64::from(height));
    // The part of the image drawn, and the size it is drawn at.
    let (source, target) = match fit {
        _ if w <= box_w && h <= box_h => ((0.0, 0.0, w, h), (w, h)),
        Fit::Scale => {
            let ratio = (box_w / w).min(box_h / h);
            ((0.0, 0.0, w, h), ((w * ratio).round().max(1.0), (h * ratio).round().max(1.0)))
        }
        // Scaled to cover the box, then cut to it around the middle.
        Fit::Crop => {
            let ratio = (box_w / w).max(box_h / h);
            let (sw, sh) = (box_w / ratio, box_h / ratio);
            (((w - sw) / 2.0, (h - sh) / 2.0, sw, sh), (box_w, box_h))
        }
    };
    let canvas = OffscreenCanvas::new(target.0 as u32, target.1 as u32)?;
    let context: OffscreenCanvasRenderingContext2d =
        canvas.get_context("2d")?.ok_or_else(|| JsValue::from_str("no 2d canvas in this browser"))?.unchecked_into();
    let (sx, sy, sw, sh) = source;
    context.draw_image_with_image_bitmap_and_sw_and_sh_and_dx_and_dy_and_dw_and_dh(
        &bitmap, sx, sy, sw, sh, 0.0, 0.0, target.0, target.1,
    )?;
    bitmap.close();
    let content_type = match file.starts_with(&[0xff, 0xd8, 0xff]) {
        true => "image/jpeg",
        false => "image/png",
    };
    let options = ImageEncodeOptions::new();
    options.set_type(content_type);
    let encoded: Blob = JsFuture::from(canvas.convert_to_blob_with_options(&options)?).await?.unchecked_into();
    let bytes = JsFuture::from(encoded.array_buffer()).await?;
    Ok((content_type.to_owned(), Uint8Array::new(&bytes).to_vec()))
}
