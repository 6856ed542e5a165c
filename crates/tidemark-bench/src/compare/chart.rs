//! The throughput chart, as PNG: one horizontal bar per scenario and target.

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn draw(path: &Path, doc: &serde_json::Value) -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT}; install fonts-dejavu-core for the chart"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    let rows = doc["results"].as_array().cloned().unwrap_or_default();
    anyhow::ensure!(!rows.is_empty(), "no results to draw");
    let max = rows
        .iter()
        .filter_map(|r| r["per_sec"].as_f64())
        .fold(1.0, f64::max);
    let height = 80 + rows.len() as u32 * 34;
    let root = BitMapBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(380);
    let title = format!(
        "Tidemark vs Redis vs PostgreSQL — {} records, {} connections, {} cores",
        doc["params"]["records"], doc["params"]["connections"], doc["machine"]["cores"]
    );
    root.titled(&title, ("sans-serif", 18))?;
    let mut chart = ChartBuilder::on(&right)
        .margin(10)
        .margin_top(40)
        .x_label_area_size(30)
        .build_cartesian_2d(0.0..max * 1.15, 0.0..rows.len() as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc("operations (or orders) per second")
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let v = r["per_sec"].as_f64().unwrap_or(0.0);
        let target = r["target"].as_str().unwrap_or("");
        let color = match target {
            t if t.starts_with("tidemark") => RGBColor(0, 110, 160),
            "redis" => RGBColor(200, 60, 50),
            _ => RGBColor(70, 130, 70),
        };
        let y = (rows.len() - 1 - i) as f64;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y + 0.15), (v, y + 0.85)],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{v:.0}"),
            (v, y + 0.7),
            ("sans-serif", 13),
        )))?;
        let label = format!("{} — {}", r["title"].as_str().unwrap_or(""), target);
        let py = 40 + ((i as f64 + 0.3) * ((height - 70) as f64 / rows.len() as f64)) as i32;
        left.draw(&Text::new(label, (10, py), ("sans-serif", 13)))?;
    }
    root.present()?;
    Ok(())
}
