//! A picture of a step: one horizontal bar per node, stacked by phase (forward, backward,
//! update; the loss has a bar of its own), so the layers that dominate stand out. Rendered
//! as SVG with plotters; returned as a string (writing it is the caller's job).

use plotters::prelude::*;

use opcount::report::{Report, thousands};
use opcount::text::escape;
use opcount::{Phase, StepCounts};

/// Colours of the phases, in stacking order.
const PHASES: [(Phase, RGBColor); 4] = [
    (Phase::Forward, RGBColor(0x1f, 0x77, 0xb4)),
    (Phase::Backward, RGBColor(0xff, 0x7f, 0x0e)),
    (Phase::Update, RGBColor(0x2c, 0xa0, 0x2c)),
    (Phase::Loss, RGBColor(0x94, 0x67, 0xbd)),
];

/// The SVG of a report's step: the measured counts if it has them, else the closed form's.
/// Bars are the arithmetic operations of each node (the loss last), split by phase.
pub fn svg(report: &Report) -> String {
    let step: &StepCounts = report.measured.as_ref().unwrap_or(&report.estimated);
    // One row per node, then the loss: the operations of each phase.
    let mut rows: Vec<(String, [u128; 4])> = report
        .nodes
        .iter()
        .zip(&step.nodes)
        .map(|(info, c)| {
            (
                escape(&info.name).into_owned(),
                [c.forward.total(), c.backward.total(), c.update.total(), 0],
            )
        })
        .collect();
    rows.push((
        format!("loss: {}", report.loss),
        [0, 0, 0, step.loss.total()],
    ));
    let widest = rows
        .iter()
        .map(|(_, p)| p.iter().sum::<u128>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;

    let height = 90 + 22 * rows.len() as u32;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (960, height)).into_drawing_area();
        draw(&root, report, &rows, widest).expect("drawing into a string cannot fail");
    }
    out
}

type Drawing<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw(
    root: &Drawing<'_>,
    report: &Report,
    rows: &[(String, [u128; 4])],
    widest: f64,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    root.fill(&WHITE)?;
    let n = rows.len() as i32;
    let caption = format!(
        "{}: arithmetic operations of one training step, batch {} ({} in all)",
        escape(&report.model),
        report.batch,
        thousands(
            rows.iter()
                .flat_map(|(_, p)| p.iter())
                .copied()
                .sum::<u128>()
        )
    );
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(150)
        .build_cartesian_2d(0.0..widest * 1.02, (0..n - 1).into_segmented())?;
    // The first node at the top: row i sits in band n - 1 - i.
    let band = |i: usize| n - 1 - i as i32;
    let label = |y: &SegmentValue<i32>| match y {
        SegmentValue::CenterOf(b) | SegmentValue::Exact(b) => rows
            .get((n - 1 - b) as usize)
            .map_or_else(String::new, |(name, _)| name.clone()),
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&label)
        .x_label_formatter(&|x: &f64| thousands(x.round() as u128))
        .x_desc("operations")
        .draw()?;
    for (p, (phase, color)) in PHASES.iter().enumerate() {
        let bars = rows.iter().enumerate().filter_map(|(i, (_, parts))| {
            let start: u128 = parts[..p].iter().sum();
            (parts[p] > 0).then(|| {
                let b = band(i);
                let mut bar = Rectangle::new(
                    [
                        (start as f64, SegmentValue::Exact(b)),
                        ((start + parts[p]) as f64, SegmentValue::Exact(b + 1)),
                    ],
                    color.filled(),
                );
                bar.set_margin(3, 3, 0, 0);
                bar
            })
        });
        chart
            .draw_series(bars)?
            .label(phase.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()
}
