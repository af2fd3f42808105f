//! The Prometheus text exposition format 0.0.4, written into one reused buffer. Pure code.
//!
//! A family is announced once (`# HELP`, `# TYPE`), then its samples follow; every sample
//! carries the device labels IoT Edge puts on every series (`iothub`, `edge_device`,
//! `instance_number`) and `ms_telemetry="True"` when the family is one IoT Edge tags.

use std::fmt::Write as _;

/// The `Content-Type` Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; the name ends in `_total`.
    Counter,
    Gauge,
    /// `_sum` and `_count` samples (no quantiles).
    Summary,
}

/// One metric family: its name, kind, help, and whether IoT Edge tags it `ms_telemetry`.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub ms_telemetry: bool,
}

impl Family {
    pub const fn counter(name: &'static str, help: &'static str, ms_telemetry: bool) -> Family {
        Family { name, kind: Kind::Counter, help, ms_telemetry }
    }

    pub const fn gauge(name: &'static str, help: &'static str, ms_telemetry: bool) -> Family {
        Family { name, kind: Kind::Gauge, help, ms_telemetry }
    }

    pub const fn summary(name: &'static str, help: &'static str, ms_telemetry: bool) -> Family {
        Family { name, kind: Kind::Summary, help, ms_telemetry }
    }
}

/// The labels every series carries.
#[derive(Debug, Clone)]
pub struct DeviceLabels {
    pub iothub: String,
    pub edge_device: String,
    /// Random per process start, as IoT Edge's GUID: tells a restart from a counter reset.
    pub instance_number: String,
}

/// An exposition being written: `family`, then `sample`s of it.
pub struct Exposition<'a> {
    out: &'a mut String,
    device: &'a DeviceLabels,
    current: Option<Family>,
}

impl<'a> Exposition<'a> {
    /// Starts writing into `out` (cleared; its capacity is kept from one scrape to the next).
    pub fn new(out: &'a mut String, device: &'a DeviceLabels) -> Exposition<'a> {
        out.clear();
        Exposition { out, device, current: None }
    }

    /// Announces `family`; the samples that follow belong to it.
    pub fn family(&mut self, family: Family) -> &mut Self {
        debug_assert!(family.kind != Kind::Counter || family.name.ends_with("_total"), "{}", family.name);
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        };
        let _ = writeln!(self.out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(self.out, "# TYPE {} {kind}", family.name);
        self.current = Some(family);
        self
    }

    /// The `_sum` and `_count` of the current (summary) family with extra `labels`.
    pub fn summary(&mut self, labels: &[(&str, &str)], sum: f64, count: f64) -> &mut Self {
        self.sample_named("_sum", labels, sum);
        self.sample_named("_count", labels, count)
    }

    /// One sample of the current family with extra `labels`.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.sample_named("", labels, value)
    }

    fn sample_named(&mut self, suffix: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let Some(family) = self.current else {
            debug_assert!(false, "a sample before its family");
            return self;
        };
        self.out.push_str(family.name);
        self.out.push_str(suffix);
        self.out.push('{');
        let device = [
            ("iothub", self.device.iothub.as_str()),
            ("edge_device", self.device.edge_device.as_str()),
            ("instance_number", self.device.instance_number.as_str()),
        ];
        let telemetry: &[(&str, &str)] = if family.ms_telemetry { &[("ms_telemetry", "True")] } else { &[] };
        let mut first = true;
        for (name, value) in device.iter().chain(labels).chain(telemetry) {
            if !first {
                self.out.push(',');
            }
            first = false;
            self.out.push_str(name);
            self.out.push_str("=\"");
            escape_into(self.out, value);
            self.out.push('"');
        }
        self.out.push_str("} ");
        write_value(self.out, value);
        self.out.push('\n');
        self
    }

    /// `family` with one unlabelled sample.
    pub fn single(&mut self, family: Family, value: f64) -> &mut Self {
        self.family(family).sample(&[], value)
    }
}

/// Label values escape `\`, `"` and newlines (the format's only escapes).
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Integers without a fraction (counters are whole numbers), the rest as Rust prints them.
fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        let _ = write!(out, "{value:.0}");
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceLabels {
        DeviceLabels { iothub: "h.azure-devices.net".into(), edge_device: "gw".into(), instance_number: "42".into() }
    }

    #[test]
    fn families_are_announced_and_samples_carry_the_device_labels() {
        let (mut out, device) = (String::new(), device());
        let mut e = Exposition::new(&mut out, &device);
        e.family(Family::counter("edgehub_gettwin_total", "Twin GETs.", true)).sample(&[("source", "m")], 3.0);
        e.single(Family::gauge("edgehub_connected_clients", "Clients.", false), 2.0);
        assert_eq!(
            out,
            "# HELP edgehub_gettwin_total Twin GETs.\n# TYPE edgehub_gettwin_total counter\n\
             edgehub_gettwin_total{iothub=\"h.azure-devices.net\",edge_device=\"gw\",instance_number=\"42\",source=\"m\",ms_telemetry=\"True\"} 3\n\
             # HELP edgehub_connected_clients Clients.\n# TYPE edgehub_connected_clients gauge\n\
             edgehub_connected_clients{iothub=\"h.azure-devices.net\",edge_device=\"gw\",instance_number=\"42\"} 2\n"
        );
    }

    #[test]
    fn label_values_and_numbers_are_escaped_and_formatted() {
        let (mut out, device) = (String::new(), device());
        let mut e = Exposition::new(&mut out, &device);
        e.family(Family::gauge("g", "h", false));
        for (value, text) in
            [(1.5, "1.5"), (f64::NAN, "NaN"), (f64::INFINITY, "+Inf"), (0.0, "0"), (1e20, "100000000000000000000")]
        {
            e.sample(&[("v", "a\"b\\c\nd")], value);
            let line = e.out.lines().last().unwrap_or_default().to_owned();
            assert!(line.ends_with(&format!(" {text}")), "{line}");
            assert!(line.contains(r#"v="a\"b\\c\nd""#), "{line}");
        }
    }

    #[test]
    fn the_buffer_is_reused() {
        let (mut out, device) = (String::with_capacity(4096), device());
        Exposition::new(&mut out, &device).single(Family::gauge("g", "h", false), 1.0);
        let capacity = out.capacity();
        Exposition::new(&mut out, &device).single(Family::gauge("g", "h", false), 2.0);
        assert_eq!(out.capacity(), capacity);
        assert!(out.ends_with("} 2\n"));
    }
}
