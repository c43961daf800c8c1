//! Rendering results as text tables (tabled), JSON and CSV. Returns strings; printing is the
//! binary's job.

use tabled::builder::Builder;
use tabled::settings::object::{Columns, Object, Rows};
use tabled::settings::{Alignment, Style};

use crate::counts::{Counts, Op};
use crate::phases::{Phase, Totals};

/// `1234567` as `1,234,567`.
pub fn thousands(n: impl Into<u128>) -> String {
    let digits = n.into().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The kinds that are not zero in `counts`, in [`Op::ALL`] order.
pub fn used_kinds(counts: &Counts) -> Vec<Op> {
    counts.nonzero().map(|(op, _)| op).collect()
}

/// A table of a step's operations per phase: one row per phase and a total row, one column
/// per kind used, and the total of arithmetic operations (`act` is not in it).
pub fn phase_table(totals: &Totals) -> String {
    let kinds = used_kinds(&totals.all);
    let mut builder = Builder::default();
    let mut header = vec!["phase".to_string()];
    header.extend(kinds.iter().map(|op| op.name().to_string()));
    header.push("total".into());
    builder.push_record(header);
    let rows = Phase::ALL
        .iter()
        .map(|&p| (p.name(), phase_of(totals, p)))
        .chain([("step", totals.all)]);
    for (name, counts) in rows {
        let mut record = vec![name.to_string()];
        record.extend(kinds.iter().map(|&op| thousands(counts[op])));
        record.push(thousands(counts.total()));
        builder.push_record(record);
    }
    let mut table = builder.build();
    table
        .with(Style::rounded())
        .modify(Columns::new(1..).not(Rows::first()), Alignment::right());
    table.to_string()
}

fn phase_of(totals: &Totals, phase: Phase) -> Counts {
    match phase {
        Phase::Forward => totals.forward,
        Phase::Loss => totals.loss,
        Phase::Backward => totals.backward,
        Phase::Update => totals.update,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0u64), "0");
        assert_eq!(thousands(999u64), "999");
        assert_eq!(thousands(1800u64), "1,800");
        assert_eq!(thousands(15_470_264_320u64), "15,470,264,320");
    }
}
