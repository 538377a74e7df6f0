//! What a run leaves behind: Markdown tables on stdout and in `NAME.md`,
//! the raw numbers in `NAME.json`, and SVG charts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

/// A Markdown table built row by row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells are left blank, extra ones dropped).
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as GitHub-flavoured Markdown.
    pub fn markdown(&self) -> String {
        let line = |cells: &[String]| {
            let escaped: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
            format!("| {} |\n", escaped.join(" | "))
        };
        let mut out = line(&self.header);
        let rule = vec!["---".to_owned(); self.header.len()];
        out.push_str(&line(&rule));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// Where a run writes its files.
pub struct Output {
    dir: PathBuf,
}

impl Output {
    /// Creates `dir` if needed.
    pub fn new(dir: &Path) -> anyhow::Result<Output> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Output {
            dir: dir.to_owned(),
        })
    }

    /// A path inside the output directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Prints the Markdown and writes `name.md` and `name.json`.
    pub fn write(
        &self,
        name: &str,
        sections: &[(String, Table)],
        json: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let mut markdown = String::new();
        for (title, table) in sections {
            let _ = write!(markdown, "\n### {title}\n\n{}", table.markdown());
        }
        println!("{markdown}");
        std::fs::write(self.path(&format!("{name}.md")), &markdown)?;
        std::fs::write(
            self.path(&format!("{name}.json")),
            serde_json::to_string_pretty(json)?,
        )?;
        eprintln!("results in {}", self.dir.display());
        Ok(())
    }
}

/// One line of a chart.
pub struct Series {
    /// The legend text.
    pub name: String,
    /// (x, y) points in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// A line chart with one line per series, written as SVG. With `log_y`
/// the y axis is logarithmic (values below 1 are drawn at 1), so a
/// bridge at 5 ms and one at 3 s both stay readable.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> anyhow::Result<()> {
    // A log axis is drawn as log10 of the values on a linear one, labelled
    // with the values themselves.
    let y_of = |y: f64| if log_y { y.max(1.0).log10() } else { y };
    let series: Vec<Series> = series
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            points: s.points.iter().map(|&(x, y)| (x, y_of(y))).collect(),
        })
        .collect();
    let max = |pick: fn(&(f64, f64)) -> f64| {
        series
            .iter()
            .flat_map(|s| s.points.iter().map(pick))
            .fold(0.0, f64::max)
            * 1.1
    };
    let (x_max, y_max) = (max(|p| p.0).max(1.0), max(|p| p.1).max(1.0));
    let y_label_text = |v: &f64| {
        if log_y {
            format!("{}", 10f64.powf(*v).round())
        } else {
            format!("{v:.0}")
        }
    };
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&y_label_text)
        .draw()?;
    for (index, line) in series.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(line.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            line.points
                .iter()
                .map(|&point| Circle::new(point, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_header_rule_and_padded_rows() {
        let mut table = Table::new(&["a", "b"]);
        table.row(vec!["1".into()]);
        table.row(vec!["x|y".into(), "2".into(), "dropped".into()]);
        assert_eq!(
            table.markdown(),
            "| a | b |\n| --- | --- |\n| 1 |  |\n| x\\|y | 2 |\n"
        );
    }

    #[test]
    fn chart_is_an_svg_with_every_series_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.svg");
        line_chart(
            &path,
            "latency",
            "delivered/s",
            "p99 ms",
            &[
                Series {
                    name: "ours 1000 sockets".into(),
                    points: vec![(1000.0, 2.0), (2000.0, 3.0)],
                },
                Series {
                    name: "peer 1000 sockets".into(),
                    points: vec![(1000.0, 5.0)],
                },
            ],
            true,
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert!(svg.contains("ours 1000 sockets"));
        assert!(svg.contains("peer 1000 sockets"));
    }
}
