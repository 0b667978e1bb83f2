//! Results tables from scripts: `table(header, rows)` formats a Markdown table (what docs pages
//! paste), `save_table(path, header, rows)` also writes it to `path` (a comparison script keeps
//! its table in the run directory beside `metrics.jsonl`) and returns the text.

use rhai::{Array, Dynamic, Engine};

use super::{script_error, ScriptResult};

/// A cell as it reads in a table: floats with at most 4 decimals (0.9825, 1.5), the rest as is.
fn cell(value: &Dynamic) -> String {
    if let Some(x) = value.clone().try_cast::<rhai::FLOAT>() {
        if x.is_finite() && x.fract() != 0.0 {
            if x.abs() < 1e-3 {
                return format!("{x:.2e}");
            }
            let text = format!("{x:.4}");
            return text.trim_end_matches('0').trim_end_matches('.').to_string();
        }
        return format!("{x}");
    }
    value.to_string().replace('|', "\\|").replace('\n', " ")
}

fn row_text(cells: &[String]) -> String {
    format!("| {} |", cells.join(" | "))
}

/// The Markdown table; every row must have as many cells as `header`.
fn table(header: Array, rows: Array) -> ScriptResult<String> {
    if header.is_empty() {
        return Err(script_error("table: the header has no columns"));
    }
    let header: Vec<String> = header.iter().map(cell).collect();
    let mut lines = vec![
        row_text(&header),
        row_text(&vec!["---".to_string(); header.len()]),
    ];
    for (i, row) in rows.into_iter().enumerate() {
        let kind = row.type_name();
        let row = row.try_cast::<Array>().ok_or_else(|| {
            script_error(format!("table: rows[{i}] must be an array, found {kind}"))
        })?;
        if row.len() != header.len() {
            return Err(script_error(format!(
                "table: rows[{i}] has {} cells, the header {}",
                row.len(),
                header.len()
            )));
        }
        lines.push(row_text(&row.iter().map(cell).collect::<Vec<_>>()));
    }
    Ok(lines.join("\n") + "\n")
}

fn save_table(path: &str, header: Array, rows: Array) -> ScriptResult<String> {
    let text = table(header, rows)?;
    let write = || -> std::io::Result<()> {
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, &text)
    };
    write().map_err(|e| script_error(format!("save_table: {path}: {e}")))?;
    Ok(text)
}

pub fn register(engine: &mut Engine) {
    engine.register_fn("table", table);
    engine.register_fn("save_table", save_table);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[Dynamic]) -> Dynamic {
        Dynamic::from_array(cells.to_vec())
    }

    #[test]
    fn formats_a_markdown_table_with_rounded_floats() {
        let header = vec!["loss".into(), "accuracy".into(), "steps".into()];
        let rows = vec![
            row(&[
                "dpo".into(),
                Dynamic::from_float(0.98250001),
                Dynamic::from_int(600),
            ]),
            row(&["a|b".into(), Dynamic::from_float(1.0), Dynamic::from_int(6)]),
        ];
        assert_eq!(
            table(header, rows).unwrap(),
            "| loss | accuracy | steps |\n| --- | --- | --- |\n| dpo | 0.9825 | 600 |\n\
             | a\\|b | 1 | 6 |\n"
        );
    }

    #[test]
    fn a_ragged_row_is_refused_naming_it() {
        let err = table(vec!["a".into(), "b".into()], vec![row(&["x".into()])]).unwrap_err();
        assert!(
            err.to_string()
                .contains("rows[0] has 1 cells, the header 2"),
            "{err}"
        );
    }

    #[test]
    fn save_table_writes_the_file_it_returns() {
        let dir = std::env::temp_dir().join(format!("llmlab-table-{}", std::process::id()));
        let path = dir.join("sub/table.md");
        let text = save_table(
            path.to_str().unwrap(),
            vec!["a".into()],
            vec![row(&[Dynamic::from_int(1)])],
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
