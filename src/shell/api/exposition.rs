//! The Prometheus text exposition format 0.0.4: family headers, samples with
//! escaped labels, histograms. Knows no metric; writes only text.

use crate::engine::histogram::Histogram;
use crate::engine::CounterSample;
use std::fmt::Write as _;

/// Prometheus text exposition format 0.0.4, written by hand: a few dozen
/// lines do not need a metrics library.
pub struct Exposition {
    pub out: String,
}

impl Exposition {
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.out, "# HELP klinegate_{name} {help}\n# TYPE klinegate_{name} {kind}\n");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str("klinegate_");
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(self.out, "{sep}{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", prom_float(value));
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value as f64);
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn prom_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

impl Exposition {
    /// A histogram family: cumulative `_bucket{le=...}`, then `_sum` (seconds) and `_count`.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, n) in h.cumulative() {
            self.sample(&bucket, &[("le", &prom_float(le))], n as f64);
        }
        self.sample(&format!("{name}_sum"), &[], h.sum_seconds());
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }
}

impl Exposition {
    /// The engine's plain counters, one family per run of samples with the
    /// same name (`Counters::each`: every counter field has its sample).
    pub fn counters(&mut self, samples: &[CounterSample]) {
        let mut family = "";
        for s in samples {
            if s.metric != family {
                self.family(s.metric, "counter", s.help);
                family = s.metric;
            }
            let label: Vec<(&str, &str)> = s.label.into_iter().collect();
            self.sample(s.metric, &label, s.value as f64);
        }
    }
}
