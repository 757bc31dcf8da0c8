//! `steer bench --ops`: what a steering operation costs a decode step. The same batch of rows
//! decodes plainly, with an ADD, an ABLATE and a CLAMP on every row (a unit direction at every
//! position, at the middle layer's resid_pre), the four alternated for a few rounds; each
//! prints its median step time and its ratio to the plain step of the same rounds.

use std::ops::ControlFlow;
use std::sync::Arc;

use anyhow::Result;
use steer_model::{Addition, Engine, GenerateOptions, HookPoint, Op, Window};

use super::rows;

const ROUNDS: usize = 3;

pub fn run(engine: &Engine, batch: usize, tokens: usize) -> Result<()> {
    let info = engine.info();
    let point = HookPoint::ResidPre(info.n_layer / 2);
    // A fixed direction (any will do: the cost does not depend on the values).
    let dir: Arc<[f32]> = (0..info.d_model).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect::<Vec<_>>().into();
    let kinds: [(&str, Option<Op>); 4] =
        [("plain", None), ("add", Some(Op::Add)), ("ablate", Some(Op::Ablate)), ("clamp", Some(Op::Clamp { value: 3.0 }))];
    let opts = GenerateOptions { max_new_tokens: tokens + 1, stop_at_eos: false, ..Default::default() };
    let mut times: Vec<Vec<f64>> = vec![vec![]; kinds.len()];
    for _ in 0..ROUNDS {
        for (i, (_, op)) in kinds.iter().enumerate() {
            let mut rs = rows(engine, batch)?;
            if let Some(op) = op {
                let a = Addition::new(point, 1, dir.clone()).in_window(Window::AllPositions).with_op(*op);
                rs.iter_mut().for_each(|r| r.additions = vec![a.clone()]);
            }
            let out = engine.generate(&rs, &opts, |_| ControlFlow::Continue(()))?;
            times[i].push(out[0].decode_secs / (out[0].tokens.len() - 1) as f64);
        }
    }
    let mut plain = times[0].clone();
    let plain = super::percentile(&mut plain, 0.5);
    outln!("decode step with one op on each of {batch} rows at {point}, every position ({ROUNDS} alternated rounds, median):");
    for ((name, _), t) in kinds.iter().zip(times.iter_mut()) {
        let (lo, hi) = (t.iter().copied().fold(f64::MAX, f64::min), t.iter().copied().fold(0.0, f64::max));
        let med = super::percentile(t, 0.5);
        outln!("  {name:<7} {:>8.1} ms/step (range {:.1}-{:.1})  {:.3}x plain", med * 1e3, lo * 1e3, hi * 1e3, med / plain);
    }
    Ok(())
}
