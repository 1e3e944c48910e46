//! Charts of the paper's figures, as SVG and PNG, drawn with plotters.
//!
//! Each figure is a grouped bar chart: functions along the x axis, one bar per strategy
//! at its median, with a whisker from min to max. Latency and memory use a log scale (they
//! span two orders of magnitude across functions); the breakdown's speedups are linear
//! with a line at 1 (linux-ra). On single-VM latency a tick across each bar marks the
//! strategy's warm floor.
//!
//! Text needs a TrueType font: DejaVu Sans (`fonts-dejavu-core`, which
//! `scripts/setup.sh` installs) is looked up in the usual places, or the file named by
//! `SNAPBPF_FONT`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{Figure, Metric};

/// Errors drawing charts.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// No usable font.
    #[error("no TrueType font for chart text: install fonts-dejavu-core or set SNAPBPF_FONT to a .ttf file ({0})")]
    Font(String),
    /// Drawing or encoding failed.
    #[error("drawing {path}: {reason}")]
    Draw {
        /// The chart file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Where distributions keep DejaVu Sans.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
];

/// Chart size, pixels.
const SIZE: (u32, u32) = (1280, 620);

/// Bar colour of a series (see [`Figure::series`]): one hue per strategy, in the order
/// the run lists them (with the default plan: greys for Linux, blue REAP, green FaaSnap,
/// red SnapBPF), and for its variants the same hue darker, then lighter, alternately.
fn colour((strategy, variant): (usize, usize)) -> RGBColor {
    const HUES: &[RGBColor] = &[
        RGBColor(170, 170, 170),
        RGBColor(90, 90, 90),
        RGBColor(49, 104, 178),
        RGBColor(58, 150, 80),
        RGBColor(205, 45, 45),
        RGBColor(150, 90, 190),
        RGBColor(40, 160, 170),
        RGBColor(190, 170, 40),
    ];
    let RGBColor(r, g, b) = HUES[strategy % HUES.len()];
    if variant == 0 {
        return RGBColor(r, g, b);
    }
    // Variant 1 darker, 2 lighter, 3 darker still, ...
    let step = variant.div_ceil(2).min(3) as f64 * 0.22;
    let shade = |c: u8| -> u8 {
        let c = f64::from(c);
        let v = if variant % 2 == 1 {
            c * (1.0 - step)
        } else {
            c + (255.0 - c) * step
        };
        v.round().clamp(0.0, 255.0) as u8
    };
    RGBColor(shade(r), shade(g), shade(b))
}

/// Registers the chart font once per process.
fn font() -> Result<(), ChartError> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("SNAPBPF_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .collect();
        let path = candidates
            .iter()
            .find(|p| p.is_file())
            .ok_or_else(|| format!("none of {}", FONT_PATHS.join(", ")))?;
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // plotters keeps fonts for the life of the process; this happens once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a TrueType font", path.display()))
    })
    .clone()
    .map_err(ChartError::Font)
}

/// Draws every figure into `dir` as `<id>.svg` and `<id>.png`; returns the files written.
pub fn write_all(figures: &[Figure], dir: &Path) -> Result<Vec<PathBuf>, ChartError> {
    font()?;
    let mut written = Vec::new();
    for fig in figures {
        if fig.cells.iter().flatten().all(Option::is_none) {
            continue;
        }
        let svg = dir.join(format!("{}.svg", fig.id));
        let png = dir.join(format!("{}.png", fig.id));
        // Draw to temporary names and rename, so a chart on disk is always whole. The PNG
        // encoder picks the format from the extension, so the temporary name keeps it.
        let svg_tmp = dir.join(format!(".{}.tmp.svg", fig.id));
        let png_tmp = dir.join(format!(".{}.tmp.png", fig.id));
        let fail = |path: &Path| {
            let path = path.to_path_buf();
            let tmps = [svg_tmp.clone(), png_tmp.clone()];
            move |reason: String| {
                for tmp in tmps {
                    let _ = std::fs::remove_file(tmp);
                }
                ChartError::Draw { path, reason }
            }
        };
        draw(SVGBackend::new(&svg_tmp, SIZE).into_drawing_area(), fig).map_err(fail(&svg))?;
        draw(BitMapBackend::new(&png_tmp, SIZE).into_drawing_area(), fig).map_err(fail(&png))?;
        for (tmp, path) in [(svg_tmp.clone(), svg), (png_tmp.clone(), png)] {
            std::fs::rename(&tmp, &path).map_err(|e| fail(&path)(e.to_string()))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Largest value an axis reaches: beyond it (a corrupt or absurd results file) bars are
/// clipped, so an axis always has a finite number of ticks.
const AXIS_MAX: f64 = 1e12;

/// Value range of the axis: from below the smallest whisker to above the largest, finite
/// and ordered whatever the values are.
fn value_range(fig: &Figure) -> (f64, f64) {
    let finite = |v: f64| v.is_finite() && v > 0.0;
    let all: Vec<_> = fig.cells.iter().flatten().flatten().collect();
    let lo = all
        .iter()
        .map(|s| s.min)
        .filter(|v| finite(*v))
        .fold(AXIS_MAX, f64::min);
    let hi = all
        .iter()
        .map(|s| s.max)
        .filter(|v| finite(*v))
        .fold(0.0, f64::max)
        .min(AXIS_MAX);
    match fig.metric {
        Metric::Speedup => (0.0, (hi * 1.1).max(1.2)),
        _ => {
            let lo = (lo * 0.5).clamp(1e-3, AXIS_MAX);
            (lo, (hi * 2.5).clamp(lo * 10.0, AXIS_MAX * 10.0))
        }
    }
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |err: DrawingAreaErrorKind<DB::ErrorType>| err.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (lo, hi) = value_range(fig);
    let n_functions = fig.functions.len();
    let n_series = fig.strategies.len().max(1);
    let caption = if fig.floors.iter().flatten().any(Option::is_some) {
        format!("{} (tick: warm floor)", fig.title)
    } else {
        fig.title.clone()
    };
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(70);
    let x_range = 0f64..n_functions as f64;
    if fig.metric == Metric::Speedup {
        let mut chart = builder.build_cartesian_2d(x_range, lo..hi).map_err(e)?;
        configure_mesh(&mut chart, fig).map_err(e)?;
        bars(&mut chart, fig, lo, n_series).map_err(e)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, 1.0), (n_functions as f64, 1.0)],
                BLACK.stroke_width(1),
            )))
            .map_err(e)?;
        legend(&mut chart).map_err(e)?;
        labels(&root, &chart, fig, lo).map_err(e)?;
    } else {
        let mut chart = builder
            .build_cartesian_2d(x_range, (lo..hi).log_scale())
            .map_err(e)?;
        configure_mesh(&mut chart, fig).map_err(e)?;
        bars(&mut chart, fig, lo, n_series).map_err(e)?;
        legend(&mut chart).map_err(e)?;
        labels(&root, &chart, fig, lo).map_err(e)?;
    }
    root.present().map_err(e)
}

type Chart<'a, DB, Y> =
    ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

fn configure_mesh<DB: DrawingBackend, Y>(
    chart: &mut Chart<'_, DB, Y>,
    fig: &Figure,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(fig.axis_label())
        .y_label_formatter(&|v| match fig.metric {
            Metric::Speedup => format!("{v:.1}"),
            _ if *v >= 1.0 => format!("{v:.0}"),
            _ => format!("{v}"),
        })
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()
}

/// One bar per strategy in each function's slot, with min–max whiskers.
fn bars<DB: DrawingBackend, Y>(
    chart: &mut Chart<'_, DB, Y>,
    fig: &Figure,
    floor: f64,
    n_series: usize,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let slot = 0.84 / n_series as f64;
    for (si, strategy) in fig.strategies.iter().enumerate() {
        let colour = colour(fig.series.get(si).copied().unwrap_or((si, 0)));
        let cells: Vec<(f64, crate::Summary)> = fig.cells[si]
            .iter()
            .enumerate()
            .filter_map(|(fi, s)| s.map(|s| (fi as f64 + 0.08 + slot * si as f64, s)))
            .collect();
        chart
            .draw_series(cells.iter().map(|(x, s)| {
                Rectangle::new(
                    [(*x + slot * 0.08, floor), (*x + slot * 0.92, s.median)],
                    colour.filled(),
                )
            }))?
            .label(strategy.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
        chart.draw_series(cells.iter().map(|(x, s)| {
            let mid = *x + slot / 2.0;
            PathElement::new(vec![(mid, s.min), (mid, s.max)], BLACK.stroke_width(1))
        }))?;
        // The warm floor of the bar, as a tick across it: white inside the bar, black
        // above it (a warm run slower than the cold median).
        let floors = fig.floors.get(si).into_iter().flatten().enumerate();
        chart.draw_series(floors.filter_map(|(fi, floor)| {
            let x = fi as f64 + 0.08 + slot * si as f64;
            let top = fig.cells[si][fi].map_or(f64::INFINITY, |s| s.median);
            floor.map(|y| {
                let ink = if y <= top { WHITE } else { BLACK };
                PathElement::new(
                    vec![(x + slot * 0.08, y), (x + slot * 0.92, y)],
                    ink.stroke_width(2),
                )
            })
        }))?;
    }
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a, Y>(
    chart: &mut Chart<'a, DB, Y>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
}

/// Function names centred under their slots (the x axis is continuous, so its own labels
/// would not line up with the groups).
fn labels<DB: DrawingBackend, Y>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart<'_, DB, Y>,
    fig: &Figure,
    floor: f64,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let style =
        TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (fi, function) in fig.functions.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(fi as f64 + 0.5, floor));
        root.draw(&Text::new(function.as_str(), (x, y + 8), style.clone()))?;
    }
    Ok(())
}
