//! pass@k with the unbiased estimator of the Codex paper: for a problem with `n` samples of
//! which `c` passed, `1 - C(n-c, k) / C(n, k)`, averaged over problems.

use std::collections::{BTreeMap, HashMap};

/// One problem's samples: how many were graded and how many passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub samples: u64,
    pub passed: u64,
}

/// The chance that at least one of `k` samples drawn from `n` (of which `c` passed) passes,
/// computed as a product so that large `n` does not overflow.
pub fn pass_at_k(n: u64, c: u64, k: u64) -> f64 {
    if n < k || k == 0 {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    let fail_all: f64 = ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product();
    1.0 - fail_all
}

/// Graded samples (each problem's key and whether it passed) grouped by problem, problems in
/// the order they first appear.
pub fn tally(results: impl IntoIterator<Item = (String, bool)>) -> Vec<Tally> {
    let mut order: Vec<String> = Vec::new();
    let mut by_key: HashMap<String, Tally> = HashMap::new();
    for (key, passed) in results {
        let t = by_key.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            Tally::default()
        });
        t.samples += 1;
        t.passed += u64::from(passed);
    }
    order.iter().map(|k| by_key[k]).collect()
}

/// pass@k over problems, for each `k` that every problem has samples enough for; `pass@1`
/// always when there is any problem. Keys as SandboxFusion's clients print them: `pass@1`.
pub fn pass_at(tallies: &[Tally], ks: &[u64]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Some(fewest) = tallies.iter().map(|t| t.samples).min() else {
        return out;
    };
    for &k in ks.iter().filter(|&&k| k >= 1 && k <= fewest) {
        let sum: f64 = tallies
            .iter()
            .map(|t| pass_at_k(t.samples, t.passed, k))
            .sum();
        out.insert(format!("pass@{k}"), sum / tallies.len() as f64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn the_estimator() {
        assert!(close(pass_at_k(1, 1, 1), 1.0));
        assert!(close(pass_at_k(1, 0, 1), 0.0));
        assert!(close(pass_at_k(10, 3, 1), 0.3));
        // 1 - C(7,5)/C(10,5) = 1 - 21/252
        assert!(close(pass_at_k(10, 3, 5), 1.0 - 21.0 / 252.0));
        assert!(close(pass_at_k(10, 6, 5), 1.0));
        assert!(pass_at_k(3, 1, 5).is_nan());
        assert!(close(pass_at_k(200, 0, 100), 0.0));
    }

    #[test]
    fn averaged_over_problems_for_the_ks_that_fit() {
        let t = [
            Tally {
                samples: 2,
                passed: 2,
            },
            Tally {
                samples: 2,
                passed: 0,
            },
        ];
        let m = pass_at(&t, &[1, 2, 10]);
        assert_eq!(m.len(), 2);
        assert!(close(m["pass@1"], 0.5));
        assert!(close(m["pass@2"], 0.5));
        assert!(pass_at(&[], &[1]).is_empty());
    }
}
