//! Values of shape `[tokens, width]`, the transformer's: every operation over them counted
//! exactly (measured equals closed form for every node, phase and kind, over random shapes),
//! gradients against finite differences, and each operation against an oracle.

#[path = "support/counts.rs"]
mod counts;
#[path = "support/gradient.rs"]
mod gradient;
#[path = "support/rng.rs"]
mod rng;
#[path = "support/sequences.rs"]
mod sequences;
#[path = "support/values.rs"]
mod values;

use opcount::data::Dataset;
use opcount::{Model, Network, Plan, estimate, measure_step};
use proptest::prelude::*;
use rng::Rng;
use sequences::random_sequence;

fn plan(text: &str) -> Plan {
    Model::parse(text, "t").unwrap().plan("t").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn random_sequence_models_match_their_closed_forms(seed in any::<u64>()) {
        let model = random_sequence(&mut Rng::new(seed), false);
        if let Err(problem) = counts::measured_equals_closed_form(&model.text, model.batch, seed) {
            prop_assert!(false, "{}", problem);
        }
    }
}

#[test]
fn random_sequence_models_match_finite_differences() {
    let mut rng = Rng::new(14);
    for _ in 0..64 {
        let model = random_sequence(&mut rng, true);
        gradient::check(&model.text, model.batch, rng.next_u64());
    }
}

/// A dense layer over `[tokens, width]` is the same layer applied to every token: B examples
/// of T tokens compute exactly what B*T examples of one token compute, and count the same.
#[test]
fn a_dense_layer_over_tokens_is_one_row_per_token() {
    let (t, n, b) = (5, 3, 2);
    let layers = "layers: [Dense(units: 4, activation: Gelu), Dense(units: 2, bias: false)]";
    let tokens = plan(&format!(
        "(name: \"s\", input: [{t}, {n}], loss: Mse, {layers})"
    ));
    let rows = plan(&format!("(name: \"s\", input: [{n}], loss: Mse, {layers})"));
    assert_eq!(tokens.nodes()[2].output().dims(), [t, 2]);
    assert_eq!(tokens.params(), rows.params());
    assert_eq!(
        estimate::step(&tokens, b).unwrap(),
        estimate::step(&rows, b * t).unwrap()
    );
    let inputs: Vec<f64> = (0..b * t * n).map(|i| (i as f64 * 0.37).sin()).collect();
    let y_tokens = Network::<f64>::new(&tokens).forward(&inputs, b).to_vec();
    let y_rows = Network::<f64>::new(&rows).forward(&inputs, b * t).to_vec();
    assert_eq!(y_tokens, y_rows);
    let data = Dataset::synthetic(&tokens, b, 4);
    assert_eq!(
        measure_step(&tokens, &data, b).predictable(),
        estimate::step(&tokens, b).unwrap()
    );
}

#[test]
fn a_dense_layer_refuses_an_image() {
    let text = "(name: \"i\", input: [2, 3, 4], loss: Mse, layers: [Dense(units: 2)])";
    let err = Model::parse(text, "i.ron")
        .unwrap()
        .plan("i.ron")
        .unwrap_err()
        .to_string();
    assert!(err.contains("found 2x3x4; add a Flatten layer"), "{err}");
}

/// Each token's features come out of a LayerNorm with mean 0 and variance var / (var + eps)
/// (gamma starts at one, beta at zero), whatever the token's scale: checked in f64 against
/// the mean and variance computed here.
#[test]
fn a_layer_norm_normalises_every_token_on_its_own() {
    let (t, d) = (3, 6);
    let p = plan(&format!(
        "(name: \"ln\", input: [{t}, {d}], loss: Mse, layers: [LayerNorm])"
    ));
    assert_eq!(p.params(), 2 * d as u128);
    let x: Vec<f64> = (0..t * d)
        .map(|i| (i / d + 1) as f64 * 10.0 * (i as f64 * 1.3).sin())
        .collect();
    let y = Network::<f64>::new(&p).forward(&x, 1).to_vec();
    for (row, out) in x.chunks(d).zip(y.chunks(d)) {
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
        for (v, o) in row.iter().zip(out) {
            let want = (v - mean) / (var + 1e-5).sqrt();
            assert!((o - want).abs() < 1e-12, "{o} vs {want}");
        }
    }
}

#[test]
fn the_generator_makes_every_sequence_operation() {
    let mut rng = Rng::new(3);
    let all: String = (0..100)
        .map(|_| random_sequence(&mut rng, false).text)
        .collect();
    for wanted in [
        "op: Add",
        "op: LayerNorm",
        "op: Dense",
        "op: Gelu",
        "op: Embedding",
        "op: PositionEmbedding",
        "op: Unembed(vocab: 3), inputs",
        "share: \"n0\"",
        "op: Scores(heads: 2)",
        "op: CausalSoftmax",
        "op: Mix(heads: 2)",
        "inputs: [\"input\", \"input\"]",
        "loss: SoftmaxCrossEntropy",
    ] {
        assert!(all.contains(wanted), "no model has {wanted}");
    }
}

/// Token ids in, a table row per token out, learned positions added, and logits from the
/// same table: GPT-2's embedding and tied output layer, checked in f64 against the
/// definition (`logits[t][v] = sum_i (E[id_t][i] + P[t][i]) E[v][i]`).
#[test]
fn embedding_positions_and_a_tied_output_compute_their_definitions() {
    let (t, v, w) = (3, 5, 4);
    let text = format!(
        "(name: \"tied\", input: [{t}], loss: Mse, graph: [
            (name: \"wte\", op: Embedding(vocab: {v}, width: {w})),
            (name: \"wpe\", op: PositionEmbedding(context: 6)),
            (name: \"logits\", op: Unembed(vocab: {v}), share: \"wte\")])"
    );
    let p = plan(&text);
    assert_eq!(p.params(), (v * w + 6 * w) as u128, "the table counts once");
    assert_eq!(p.token_ids(), Some(v));
    let mut net = Network::<f64>::new(&p);
    let ids = [4.0, 0.0, 4.0];
    let y = net.forward(&ids, 1).to_vec();
    let params = net.params();
    let (table, positions) = (params[0], params[1]);
    for (k, &id) in ids.iter().enumerate() {
        let x: Vec<f64> = (0..w)
            .map(|i| table[id as usize * w + i] + positions[k * w + i])
            .collect();
        for u in 0..v {
            let want: f64 = (0..w).map(|i| x[i] * table[u * w + i]).sum();
            assert!((y[k * v + u] - want).abs() < 1e-12);
        }
    }
}

/// The tied table's gradient is the sum of the embedding's and the output layer's: the
/// output layer (last in the forward order) writes it, the embedding scatters its own from
/// zero aside (B·T·W adds) and adds it on (V·W adds, the graph's); the table is updated
/// once, by the embedding, which owns it.
#[test]
fn a_tied_table_adds_its_two_gradients_and_updates_once() {
    let (t, v, w, b) = (4u128, 7u128, 3u128, 2u128);
    let text = "(name: \"tied\", input: [4], loss: Mse, graph: [
        (name: \"wte\", op: Embedding(vocab: 7, width: 3)),
        (name: \"ln\", op: LayerNorm),
        (name: \"logits\", op: Unembed(vocab: 7), share: \"wte\")])";
    let p = plan(text);
    let step = estimate::step(&p, b as usize).unwrap();
    let (wte, logits) = (&step.nodes[0], &step.nodes[2]);
    assert_eq!(wte.forward.total(), 0, "a lookup");
    assert_eq!(wte.backward.add, b * t * w + v * w);
    assert_eq!(wte.update.mul, v * w);
    assert_eq!(logits.update.total(), 0);
    // The output layer: a dense layer of W inputs and V units without bias, over B·T rows.
    assert_eq!(logits.forward.mul, b * t * v * w);
    assert_eq!(logits.backward.mul, 2 * b * t * v * w);
    let data = Dataset::synthetic(&p, b as usize, 8);
    assert_eq!(measure_step(&p, &data, b as usize).predictable(), step);
    gradient::check(text, 2, 3);
}

#[test]
fn sharing_needs_tables_of_the_same_shape() {
    let text = "(name: \"t\", input: [4], loss: Mse, graph: [
        (name: \"wte\", op: Embedding(vocab: 7, width: 3)),
        (name: \"logits\", op: Unembed(vocab: 8), share: \"wte\")])";
    let err = Model::parse(text, "t.ron")
        .unwrap()
        .plan("t.ron")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("(embedding a table of 7 tokens x 3 features)")
            && err.contains("needs a table of 8 tokens x 3 features"),
        "{err}"
    );
}

#[test]
fn token_ids_come_from_the_input_and_the_data_must_hold_them() {
    let err = Model::parse(
        "(name: \"e\", input: [4], loss: Mse, layers: [Dense(units: 4), Embedding(vocab: 3, width: 2)])",
        "e.ron",
    )
    .unwrap()
    .plan("e.ron")
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("embedding reads token ids, so its input must be 'input'"),
        "{err}"
    );
    let model = |inputs: &str| {
        let text = format!(
            "(name: \"e\", input: [2], loss: Mse, layers: [Embedding(vocab: 3, width: 2)],
              training: (data: Inline(inputs: {inputs}, targets: Values([[0, 0, 0, 0]])),
                         epochs: 1, lr: 0.1, batch: 1))"
        );
        let model = Model::parse(&text, "e.ron").unwrap();
        let plan = model.plan("e.ron").unwrap();
        let data = &model.training.as_ref().unwrap().data;
        Dataset::load(data, std::path::Path::new("."), "e.ron", &plan).map(|_| ())
    };
    assert!(model("[[0, 2]]").is_ok());
    for (bad, shown) in [
        ("[[0, 3]]", "3"),
        ("[[1.5, 0]]", "1.5"),
        ("[[0, -1]]", "-1"),
    ] {
        let err = model(bad).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "{shown} is not a token id (a whole number from 0 to 2)"
            )),
            "{err}"
        );
    }
}

/// Causal self-attention of two heads, composed of Scores, CausalSoftmax and Mix, against a
/// direct f64 computation from its definition: for head h and token i,
/// `o_i = sum over j <= i of softmax_j(q_i . k_j / sqrt(d)) v_j`, with q, k, v = x Wq, x Wk,
/// x Wv (weights stored input-major, `w[i * units + j]`).
#[test]
fn attention_composed_of_three_operations_is_causal_self_attention() {
    let (t, w, heads) = (4, 6, 2);
    let d = w / heads;
    let text = format!(
        "(name: \"attention\", input: [{t}, {w}], loss: Mse, graph: [
            (name: \"q\", op: Dense(units: {w}, bias: false), inputs: [\"input\"]),
            (name: \"k\", op: Dense(units: {w}, bias: false), inputs: [\"input\"]),
            (name: \"v\", op: Dense(units: {w}, bias: false), inputs: [\"input\"]),
            (name: \"s\", op: Scores(heads: {heads}), inputs: [\"q\", \"k\"]),
            (name: \"p\", op: CausalSoftmax),
            (name: \"o\", op: Mix(heads: {heads}), inputs: [\"p\", \"v\"])])"
    );
    let p = plan(&text);
    let kinds: Vec<&str> = p.nodes().iter().map(|n| n.kind()).collect();
    assert_eq!(
        kinds,
        ["dense", "dense", "dense", "scores", "causal_softmax", "mix"]
    );
    assert_eq!(p.nodes()[3].output().dims(), [heads, t, t]);
    let x: Vec<f64> = (0..t * w).map(|i| (i as f64 * 0.71).cos()).collect();
    let mut net = Network::<f64>::new(&p);
    let o = net.forward(&x, 1).to_vec();
    let params = net.params();
    let project = |m: &[f64]| -> Vec<f64> {
        (0..t * w)
            .map(|at| {
                let (row, j) = (at / w, at % w);
                (0..w).map(|i| x[row * w + i] * m[i * w + j]).sum()
            })
            .collect()
    };
    let (q, k, v) = (project(params[0]), project(params[1]), project(params[2]));
    for h in 0..heads {
        let cols = h * d..(h + 1) * d;
        for i in 0..t {
            let scores: Vec<f64> = (0..=i)
                .map(|j| {
                    cols.clone()
                        .map(|c| q[i * w + c] * k[j * w + c])
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = e.iter().sum();
            for c in cols.clone() {
                let want: f64 = (0..=i).map(|j| e[j] / total * v[j * w + c]).sum();
                let got = o[i * w + c];
                assert!(
                    (got - want).abs() < 1e-12,
                    "head {h} token {i}: {got} vs {want}"
                );
            }
        }
    }
    let b = 3;
    let data = Dataset::synthetic(&p, b, 2);
    assert_eq!(
        measure_step(&p, &data, b).predictable(),
        estimate::step(&p, b).unwrap()
    );
    gradient::check(&text, 2, 6);
}

/// Attention's arithmetic per example, from docs/counting.md: with P = T (T + 1) / 2 pairs
/// per head and d = W / H, the scores and the mix are each P·W multiplications forward (the
/// multiply-accumulates the `mac` view counts), the softmax P exponentials. Masked pairs cost
/// nothing.
#[test]
fn attention_counts_only_the_unmasked_pairs() {
    let (t, w, heads) = (8u128, 12u128, 3u128);
    let pairs = t * (t + 1) / 2;
    let text = "(name: \"a\", input: [8, 12], loss: Mse, graph: [
        (name: \"q\", op: Dense(units: 12)),
        (name: \"s\", op: Scores(heads: 3), inputs: [\"q\", \"q\"]),
        (name: \"p\", op: CausalSoftmax),
        (name: \"o\", op: Mix(heads: 3), inputs: [\"p\", \"q\"])])";
    let step = estimate::step(&plan(text), 1).unwrap();
    let (s, sm, mix) = (&step.nodes[1], &step.nodes[2], &step.nodes[3]);
    assert_eq!(s.forward.mul, pairs * w);
    assert_eq!(s.forward.div, heads * pairs);
    assert_eq!(sm.forward.exp, heads * pairs);
    assert_eq!(sm.forward.act, heads * pairs);
    assert_eq!(mix.forward.mul, pairs * w);
    assert_eq!(mix.forward.add, (pairs - t) * w);
    // Backward: two products of the same size each.
    assert_eq!(s.backward.mul, 2 * pairs * w);
    assert_eq!(mix.backward.mul, 2 * pairs * w);
    use opcount::Phase;
    use opcount::convention::Convention;
    for (node, kind) in [(s, "scores"), (mix, "mix")] {
        assert_eq!(
            Convention::Mac.value(kind, Phase::Forward, &node.forward),
            Some(pairs * w)
        );
    }
    assert_eq!(
        Convention::Mac.value("causal_softmax", Phase::Forward, &sm.forward),
        Some(0)
    );
}

/// Next-token prediction: softmax cross-entropy at every token, averaged over every token of
/// every example, against its definition in f64 (`ln sum_v exp z_v - z_class` per token), and
/// counted as B·T rows of the classes (docs/counting.md, "Losses").
#[test]
fn cross_entropy_scores_every_token() {
    let (t, v, b) = (3, 4, 2);
    let text = format!(
        "(name: \"lm\", input: [{t}], loss: SoftmaxCrossEntropy, graph: [
            (name: \"wte\", op: Embedding(vocab: {v}, width: 5)),
            (name: \"logits\", op: Unembed(vocab: {v}))])"
    );
    let p = plan(&text);
    let data = Dataset::synthetic(&p, b, 5);
    assert_eq!(data.positions, t);
    let batch = data.head::<f64>(b, p.loss());
    assert_eq!(batch.classes.len(), b * t);
    let mut net = Network::<f64>::new(&p);
    let loss = net.forward_loss(&batch);
    let logits = net.output().to_vec();
    let want: f64 = logits
        .chunks(v)
        .zip(&batch.classes)
        .map(|(z, &c)| z.iter().map(|x| x.exp()).sum::<f64>().ln() - z[c])
        .sum::<f64>()
        / (b * t) as f64;
    assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
    // The loss of B examples of T tokens counts as B·T examples of one token.
    let one = plan(&format!(
        "(name: \"lm\", input: [1], loss: SoftmaxCrossEntropy, graph: [
            (name: \"wte\", op: Embedding(vocab: {v}, width: 5)),
            (name: \"logits\", op: Unembed(vocab: {v}))])"
    ));
    assert_eq!(
        estimate::loss(&p, b).unwrap(),
        estimate::loss(&one, b * t).unwrap()
    );
    assert_eq!(
        measure_step(&p, &data, b).predictable(),
        estimate::step(&p, b).unwrap()
    );
    // Accuracy counts every token's prediction.
    let eval = opcount::train::evaluate(&mut net, &data, b);
    assert_eq!((eval.examples, eval.predictions), (b, b * t));
}

/// A text as next-token examples: every character a token, ids in sorted order of the
/// distinct characters, each window's targets its inputs moved on by one, and the held-out
/// windows the end of the text.
#[test]
fn a_text_becomes_windows_of_tokens_and_their_next_characters() {
    let dir = tempfile::tempdir().unwrap();
    // 23 characters, 5 distinct: ' ' < 'a' < 'b' < 'c' < 'd'.
    std::fs::write(dir.path().join("t.txt"), "abc abd abc dab cab dda").unwrap();
    let model = |held_out: f32, vocab: usize| {
        Model::parse(
            &format!(
                "(name: \"lm\", input: [4], loss: SoftmaxCrossEntropy, graph: [
                    (name: \"wte\", op: Embedding(vocab: {vocab}, width: 2)),
                    (name: \"logits\", op: Unembed(vocab: {vocab}), share: \"wte\")],
                  training: (data: Text(path: \"t.txt\", held_out: {held_out}),
                             epochs: 1, lr: 0.1, batch: 2))"
            ),
            "lm.ron",
        )
        .unwrap()
    };
    let load = |held_out: f32, vocab: usize| {
        let m = model(held_out, vocab);
        let plan = m.plan("lm.ron").unwrap();
        let data = &m.training.as_ref().unwrap().data;
        Dataset::load_split(data, dir.path(), "lm.ron", &plan)
    };
    // 22 characters have a next one: 5 windows of 4; a quarter held out is 2 (rounded up).
    let (train, held) = load(0.25, 5).unwrap();
    let held = held.unwrap();
    assert_eq!((train.len(), held.len()), (3, 2));
    // "abc " -> ids 1 2 3 0, targets "bc a" -> 2 3 0 1.
    assert_eq!(&train.inputs[..4], [1.0, 2.0, 3.0, 0.0]);
    let opcount::data::Targets::Classes(classes) = &train.targets else {
        panic!("classes")
    };
    assert_eq!(&classes[..4], [2, 3, 0, 1]);
    // The held-out windows are the last two: characters 12..20, "dab cab ".
    assert_eq!(held.inputs, [4.0, 1.0, 2.0, 0.0, 3.0, 1.0, 2.0, 0.0]);
    let (all, none) = load(0.0, 5).unwrap();
    assert_eq!((all.len(), none), (5, None));
    let err = load(0.0, 4).unwrap_err().to_string();
    assert!(
        err.contains("the text has 5 distinct characters, the model's embedding takes 4"),
        "{err}"
    );
    let err = load(1.0, 5).unwrap_err().to_string();
    assert!(err.contains("held_out: expected a fraction"), "{err}");
}

/// Adam in the update phase: every node's update counts 13 operations per parameter it owns
/// (docs/counting.md, "Optimizers") in place of SGD's 2, measured and in the closed form;
/// a tied table is updated once; the forward, loss and backward phases are SGD's.
#[test]
fn adam_counts_its_update_per_parameter_owned() {
    let text = |optimizer: &str| {
        format!(
            "(name: \"lm\", input: [3], loss: SoftmaxCrossEntropy, graph: [
                (name: \"wte\", op: Embedding(vocab: 5, width: 4)),
                (name: \"ln\", op: LayerNorm),
                (name: \"fc\", op: Dense(units: 4, activation: Gelu)),
                (name: \"logits\", op: Unembed(vocab: 5), share: \"wte\")],
              training: (data: Inline(inputs: [[1, 2, 3], [4, 0, 1]],
                                      targets: Classes([2, 3, 4, 0, 1, 2])),
                         epochs: 1, lr: 0.01, batch: 2{optimizer}))"
        )
    };
    let (sgd, adam) = (plan(&text("")), plan(&text(", optimizer: Adam()")));
    let (s, a) = (
        estimate::step(&sgd, 2).unwrap(),
        estimate::step(&adam, 2).unwrap(),
    );
    // Parameters owned: wte 20, ln 8, fc 20; logits uses wte's.
    for (k, owned) in [(0, 20u128), (1, 8), (2, 20), (4, 0)] {
        assert_eq!(s.nodes[k].update.total(), 2 * owned, "{k}");
        assert_eq!(a.nodes[k].update.total(), 13 * owned, "{k}");
        assert_eq!(a.nodes[k].update.sqrt, owned, "{k}");
        assert_eq!(a.nodes[k].forward, s.nodes[k].forward);
        assert_eq!(a.nodes[k].backward, s.nodes[k].backward);
    }
    let model = Model::parse(&text(", optimizer: Adam()"), "lm.ron").unwrap();
    let data = Dataset::load(
        &model.training.as_ref().unwrap().data,
        std::path::Path::new("."),
        "lm.ron",
        &adam,
    )
    .unwrap();
    assert_eq!(measure_step(&adam, &data, 2).predictable(), a);
    assert!(adam.memory_bytes(2, 4) > sgd.memory_bytes(2, 4) + 2 * 48 * 4 - 1);
}

/// Adam trains a small next-token model on a repeating text: the loss falls well below
/// ln(vocabulary), and the counted and plain networks agree bit for bit along the way.
#[test]
fn adam_learns_a_repeating_text() {
    let text =
        "(name: \"lm\", input: [6], loss: SoftmaxCrossEntropy, init: Xavier(seed: 3), graph: [
        (name: \"wte\", op: Embedding(vocab: 4, width: 8)),
        (name: \"wpe\", op: PositionEmbedding(context: 6)),
        (name: \"ln\", op: LayerNorm),
        (name: \"q\", op: Dense(units: 8)),
        (name: \"k\", op: Dense(units: 8), inputs: [\"ln\"]),
        (name: \"v\", op: Dense(units: 8), inputs: [\"ln\"]),
        (name: \"s\", op: Scores(heads: 2), inputs: [\"q\", \"k\"]),
        (name: \"p\", op: CausalSoftmax),
        (name: \"mix\", op: Mix(heads: 2), inputs: [\"p\", \"v\"]),
        (name: \"res\", op: Add, inputs: [\"wpe\", \"mix\"]),
        (name: \"logits\", op: Unembed(vocab: 4), share: \"wte\")],
      training: (data: Inline(inputs: [[0, 1, 2, 3, 0, 1], [2, 3, 0, 1, 2, 3]],
                              targets: Classes([1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0])),
                 epochs: 1, lr: 0.05, batch: 2, optimizer: Adam()))";
    let model = Model::parse(text, "lm.ron").unwrap();
    let p = model.plan("lm.ron").unwrap();
    let data = Dataset::load(
        &model.training.as_ref().unwrap().data,
        std::path::Path::new("."),
        "lm.ron",
        &p,
    )
    .unwrap();
    let mut plain = Network::<f32>::new(&p);
    let mut counted = Network::<opcount::Counted<f32>>::new(&p);
    let (a, b) = (data.head::<f32>(2, p.loss()), data.head(2, p.loss()));
    let mut loss = 0.0;
    for _ in 0..60 {
        loss = plain.step(&a, 0.05);
        let again = counted.step(&b, opcount::Counted::new(0.05));
        assert_eq!(loss.to_bits(), again.get().to_bits());
    }
    assert!(loss < 0.1 * 4f32.ln(), "loss {loss}");
}
