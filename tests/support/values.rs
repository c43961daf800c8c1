//! What the random graph generators (graphs.rs, sequences.rs) share: the activations they
//! draw from, and the values a graph has made so far, so that every value ends up read.
//! Included with `#[path]` by each test crate that includes a generator.
#![allow(dead_code)]

use crate::rng::Rng;
use opcount::model::Activation;

/// Every activation of the registry but softmax (which works per row of the last axis, tested on its own), and with
/// `smooth` none with a kink (ReLU, ReLU6), which a finite difference can straddle.
pub fn activations(smooth: bool) -> Vec<String> {
    Activation::ALL
        .iter()
        .map(|a| format!("{a:?}"))
        .filter(|a| a != "Softmax" && !(smooth && ["Relu", "Relu6"].contains(&a.as_str())))
        .collect()
}

/// Values of one shape by name, and whether a node read them.
#[derive(Default)]
pub struct Values(Vec<(String, bool)>);

impl Values {
    /// A new value, not read yet.
    pub fn push(&mut self, name: impl Into<String>) {
        self.0.push((name.into(), false));
    }

    /// One of the values at random, now read.
    pub fn pick(&mut self, rng: &mut Rng) -> String {
        let i = rng.below(self.0.len());
        self.0[i].1 = true;
        self.0[i].0.clone()
    }

    /// Sums, two at a time, the values no node read (the input aside) with `Add` nodes
    /// named `n<k>` from `n<entries.len()>` on, and returns the name of the one left.
    pub fn join_unread(&self, entries: &mut Vec<String>) -> String {
        let mut unread: Vec<String> = self
            .0
            .iter()
            .filter(|(n, read)| !read && n != "input")
            .map(|(n, _)| n.clone())
            .collect();
        let mut k = entries.len();
        while unread.len() > 1 {
            let (a, b) = (unread.remove(0), unread.remove(0));
            let name = format!("n{k}");
            entries.push(format!(
                "(name: \"{name}\", op: Add, inputs: [\"{a}\", \"{b}\"])"
            ));
            unread.push(name);
            k += 1;
        }
        unread.remove(0)
    }
}
