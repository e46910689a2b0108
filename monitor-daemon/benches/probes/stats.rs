//! Repeated measurements, summarised by their median (robust to the odd run that a VM's
//! neighbour disturbs) with the range shown beside it, so a reader can judge the noise.

#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    pub fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    /// "median (min–max)" with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        self.show_scaled(1.0, digits)
    }

    /// As [`show`](Self::show), each value divided by `unit` first.
    pub fn show_scaled(&self, unit: f64, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median() / unit,
            self.min() / unit,
            self.max() / unit
        )
    }
}

impl FromIterator<f64> for Samples {
    fn from_iter<I: IntoIterator<Item = f64>>(iter: I) -> Self {
        Samples(iter.into_iter().collect())
    }
}

/// Each sample of `a` divided by the sample of `b` taken in the same round: the spread of a
/// ratio is then not inflated by drift between rounds.
pub fn ratios(a: &Samples, b: &Samples) -> Samples {
    Samples(a.0.iter().zip(&b.0).map(|(x, y)| x / y).collect())
}
