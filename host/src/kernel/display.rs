//! How a cell's value is shown in a notebook: a MIME bundle. Images are `image/png`; tensors of
//! rank 1 and 2 also get an HTML table (large ones cut to their corners); every value has its
//! `text/plain` form, the REPL's text.

use base64::Engine as _;
use llmlab_plugin_api::candle::{DType, Tensor};
use llmlab_plugin_api::serde_json::{json, Map, Value};
use rhai::Dynamic;

use crate::script::{ImageHandle, Session, TensorHandle};

/// Rows and columns shown of a large tensor (the first and last half of each).
const MAX_ROWS: usize = 16;
const MAX_COLS: usize = 12;

/// The MIME bundle for `value` (which also becomes `ans`).
pub fn bundle(session: &mut Session, value: Dynamic) -> Value {
    let mut data = Map::new();
    if let Some(image) = value.read_lock::<ImageHandle>() {
        data.insert(
            "image/png".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(image.png.as_slice())),
        );
    }
    if let Some(tensor) = value.read_lock::<TensorHandle>() {
        if let Some(html) = tensor_table(&tensor.0) {
            data.insert("text/html".into(), json!(html));
        }
    }
    data.insert("text/plain".into(), json!(session.display(value)));
    Value::Object(data)
}

/// Indices shown along a dimension of `n`: all, or the first and last halves of `max` with a gap.
fn shown(n: usize, max: usize) -> Vec<Option<usize>> {
    if n <= max {
        (0..n).map(Some).collect()
    } else {
        let half = max / 2;
        (0..half)
            .map(Some)
            .chain(std::iter::once(None))
            .chain((n - half..n).map(Some))
            .collect()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An HTML table of a rank-1 or rank-2 tensor, with its shape and dtype as caption.
pub fn tensor_table(tensor: &Tensor) -> Option<String> {
    let matrix = match tensor.rank() {
        1 => tensor.unsqueeze(0).ok()?,
        2 => tensor.clone(),
        _ => return None,
    };
    let (rows, cols) = matrix.dims2().ok()?;
    let values = matrix
        .to_dtype(DType::F64)
        .ok()?
        .to_device(&llmlab_plugin_api::candle::Device::Cpu)
        .ok()?;
    let mut html = format!(
        "<table><caption>tensor {} {:?}</caption>",
        escape(&format!("{:?}", tensor.dims())),
        tensor.dtype()
    );
    let col_idx = shown(cols, MAX_COLS);
    html.push_str("<tr><th></th>");
    for c in &col_idx {
        match c {
            Some(c) => html.push_str(&format!("<th>{c}</th>")),
            None => html.push_str("<th>…</th>"),
        }
    }
    html.push_str("</tr>");
    for r in shown(rows, MAX_ROWS) {
        let Some(r) = r else {
            html.push_str(&format!(
                "<tr><th>⋮</th>{}</tr>",
                "<td>⋮</td>".repeat(col_idx.len())
            ));
            continue;
        };
        let row: Vec<f64> = values.get(r).ok()?.to_vec1().ok()?;
        html.push_str(&format!("<tr><th>{r}</th>"));
        for c in &col_idx {
            match c {
                Some(c) => html.push_str(&format!("<td>{:.4}</td>", row[*c])),
                None => html.push_str("<td>…</td>"),
            }
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    Some(html)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::candle::Device;

    #[test]
    fn small_tensors_are_whole_tables_and_large_ones_are_cut() {
        let t = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let html = tensor_table(&t).unwrap();
        assert!(html.contains("<td>4.0000</td>"), "{html}");
        assert!(html.contains("[2, 2]"), "{html}");
        let big = Tensor::arange(0f32, 40. * 30., &Device::Cpu)
            .unwrap()
            .reshape((40, 30))
            .unwrap();
        let html = tensor_table(&big).unwrap();
        assert!(
            html.contains("<th>39</th>") && !html.contains("<th>20</th>"),
            "{html}"
        );
        assert!(html.contains("…") && html.contains("⋮"), "{html}");
        assert!(html.contains(&format!("<td>{:.4}</td>", 1199.0)), "{html}");
        let cube = Tensor::zeros((2, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(tensor_table(&cube).is_none());
    }
}
