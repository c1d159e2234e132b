//! Synthetic meter fleets for demos, tests and benchmarks, deterministic per seed.
//!
//! Meters have monotonic counters (kWh, two decimals) driven by a per-device load, with gaps
//! (the meter is offline, its counter keeps running), occasional counter resets (meter
//! replaced), gateways that batch one to three intervals per message, messages delivered out of
//! order by up to `disorder` after their newest reading, exact re-sends, and faulty records at
//! `fault_rate`. ChaCha keeps the stream identical for a seed across platforms and versions.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::num::NonZeroU32;

use chrono::{DateTime, Datelike, Timelike};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::timestamp::MICROS_PER_MINUTE;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub devices: u32,
    /// Length of the simulated period.
    pub hours: f64,
    /// Reading interval in µs.
    pub interval: i64,
    pub seed: u64,
    /// Messages are delivered up to this many µs after their newest reading.
    pub disorder: i64,
    /// Probability that a reading is faulty (and a tenth of it that a whole message is).
    pub fault_rate: f64,
    /// Probability that a message is sent twice.
    pub duplicate_rate: f64,
    /// Time of the first interval, UTC µs.
    pub start: i64,
    /// Devices behind one gateway, i.e. per message.
    pub devices_per_message: NonZeroU32,
}

/// What was generated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerateStats {
    pub messages: u64,
    /// Elements written in `measurements`, faulty ones and re-sent copies included.
    pub readings: u64,
    pub resent_messages: u64,
    pub faulty_readings: u64,
    pub faulty_messages: u64,
}

const DISTRICTS: [&str; 10] = [
    "Central",
    "Wan Chai",
    "Kowloon Tong",
    "Mong Kok",
    "Sha Tin",
    "Tsuen Wan",
    "Tuen Mun",
    "Yuen Long",
    "Tai Po",
    "Sai Kung",
];
const CHINESE_DISTRICTS: [&str; 4] = ["旺角", "沙田", "中環", "灣仔"];
/// First generated device id; leaves room below for hand-written examples such as 123456.
pub const FIRST_DEVICE_ID: i32 = 1_000_000;

/// How a meter spells its timestamps.
#[derive(Debug, Clone, Copy)]
enum TimeStyle {
    Utc,
    HongKongOffset,
    Milliseconds,
}

#[derive(Debug)]
struct Meter {
    id: i32,
    name: String,
    /// Average load in hundredths of kWh per hour.
    load_centi_kwh_per_hour: f64,
    counter_centi_kwh: u64,
    style: TimeStyle,
    /// Reports an extra field that consumers must ignore.
    firmware_field: bool,
    /// Intervals left in the current outage.
    offline_for: u32,
}

/// A message waiting for its delivery time: (delivery, sequence, text, elements).
type Queued = Reverse<(i64, u64, String, u64)>;

/// Writes the fleet's messages as JSON lines to `out`.
pub fn generate(options: &GenerateOptions, out: &mut impl Write) -> io::Result<GenerateStats> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut meters: Vec<Meter> = (0..options.devices)
        .map(|i| new_meter(i, &mut rng))
        .collect();
    let per_message = options.devices_per_message.get() as usize;
    let batching: Vec<u64> = meters
        .chunks(per_message)
        .map(|_| [1, 1, 1, 2, 3][rng.random_range(0..5)])
        .collect();
    let steps =
        (options.hours * 60.0 * MICROS_PER_MINUTE as f64 / options.interval.max(1) as f64) as u64;

    let mut stats = GenerateStats::default();
    let mut queue: BinaryHeap<Queued> = BinaryHeap::new();
    let mut sequence = 0u64;
    let mut gateway_buffers: Vec<(String, u64)> = vec![(String::new(), 0); batching.len()];
    for step in 0..steps {
        let time = options.start + step as i64 * options.interval;
        for (gateway, group) in meters.chunks_mut(per_message).enumerate() {
            for meter in group.iter_mut() {
                if let Some((elements, count)) =
                    next_reading(meter, time, options, &mut rng, &mut stats)
                {
                    let (buffer, total) = &mut gateway_buffers[gateway];
                    if !buffer.is_empty() {
                        buffer.push(',');
                    }
                    buffer.push_str(&elements);
                    *total += count;
                }
            }
            let due = (step + 1) % batching[gateway] == 0 || step + 1 == steps;
            if due && !gateway_buffers[gateway].0.is_empty() {
                let (body, count) = std::mem::take(&mut gateway_buffers[gateway]);
                let message = finish_message(body, options, &mut rng, &mut stats);
                let delivery = time + jitter(options.disorder, &mut rng);
                let resend = rng.random_bool(options.duplicate_rate.clamp(0.0, 1.0));
                if resend {
                    stats.resent_messages += 1;
                    queue.push(Reverse((delivery, sequence, message.clone(), count)));
                    sequence += 1;
                }
                queue.push(Reverse((delivery, sequence, message, count)));
                sequence += 1;
            }
        }
        // Everything still to come is delivered at or after the next interval.
        let next = time + options.interval;
        while queue.peek().is_some_and(|Reverse((at, ..))| *at < next) {
            if let Some(Reverse((_, _, message, count))) = queue.pop() {
                write_line(out, &message, count, &mut stats)?;
            }
        }
    }
    while let Some(Reverse((_, _, message, count))) = queue.pop() {
        write_line(out, &message, count, &mut stats)?;
    }
    out.flush()?;
    Ok(stats)
}

fn write_line(
    out: &mut impl Write,
    message: &str,
    elements: u64,
    stats: &mut GenerateStats,
) -> io::Result<()> {
    stats.messages += 1;
    stats.readings += elements;
    out.write_all(message.as_bytes())?;
    out.write_all(b"\n")
}

fn jitter(disorder: i64, rng: &mut ChaCha8Rng) -> i64 {
    if disorder <= 0 {
        0
    } else {
        rng.random_range(0..disorder)
    }
}

fn new_meter(index: u32, rng: &mut ChaCha8Rng) -> Meter {
    let id = FIRST_DEVICE_ID + index as i32;
    let name = match rng.random_range(0..100) {
        0..=4 => format!(
            "{} 電錶 {index:05}",
            CHINESE_DISTRICTS[rng.random_range(0..4)]
        ),
        5..=6 => format!(
            "Lab \"{}\" meter {index:05}",
            (b'A' + rng.random_range(0..26u8)) as char
        ),
        _ => format!(
            "{} meter {index:05}",
            DISTRICTS[rng.random_range(0..DISTRICTS.len())]
        ),
    };
    let style = match rng.random_range(0..10) {
        0..=6 => TimeStyle::Utc,
        7..=8 => TimeStyle::HongKongOffset,
        _ => TimeStyle::Milliseconds,
    };
    Meter {
        id,
        name,
        load_centi_kwh_per_hour: rng.random_range(20.0..500.0),
        counter_centi_kwh: rng.random_range(0..5_000_000),
        style,
        firmware_field: rng.random_bool(0.3),
        offline_for: 0,
    }
}

/// Advances a meter by one interval; returns its JSON element(s) and their count unless it is
/// offline.
fn next_reading(
    meter: &mut Meter,
    time: i64,
    options: &GenerateOptions,
    rng: &mut ChaCha8Rng,
    stats: &mut GenerateStats,
) -> Option<(String, u64)> {
    let hours = options.interval as f64 / (60.0 * MICROS_PER_MINUTE as f64);
    let used = meter.load_centi_kwh_per_hour * hours * rng.random_range(0.5..1.5);
    meter.counter_centi_kwh += used.round() as u64;
    if rng.random_bool(0.0003) {
        meter.counter_centi_kwh = rng.random_range(0..100);
    }
    if meter.offline_for > 0 {
        meter.offline_for -= 1;
        return None;
    }
    if rng.random_bool(0.001) {
        meter.offline_for = rng.random_range(1..24);
    }
    let energy = format!(
        "{}.{:02}",
        meter.counter_centi_kwh / 100,
        meter.counter_centi_kwh % 100
    );
    let mut fields = Fields {
        device_id: meter.id.to_string(),
        device_name: serde_json::to_string(&meter.name).unwrap_or_default(),
        time: format!("\"{}\"", format_time(time, meter.style)),
        energy,
    };
    if !rng.random_bool(options.fault_rate.clamp(0.0, 1.0)) {
        return Some((fields.render(meter.firmware_field), 1));
    }
    stats.faulty_readings += 1;
    match rng.random_range(0..7) {
        0 => {
            return Some((
                ["\"ERR\"", "42", "null", "[]"][rng.random_range(0..4)].to_owned(),
                1,
            ))
        }
        1 => fields.device_id = format!("\"{}\"", meter.id),
        2 => fields.device_name = "null".into(),
        3 => fields.time = "\"2022-07-11 25:61\"".into(),
        4 => fields.energy = ["-1.5", "\"12.5\"", "null"][rng.random_range(0..3)].into(),
        5 => fields.time = "\"2099-01-01T00:00:00Z\"".into(),
        _ => {
            // The real reading, then a conflicting one for the same time.
            let real = fields.render(meter.firmware_field);
            fields.energy = format!(
                "{}.{:02}",
                meter.counter_centi_kwh / 100 + 1,
                meter.counter_centi_kwh % 100
            );
            return Some((format!("{real},{}", fields.render(false)), 2));
        }
    }
    Some((fields.render(meter.firmware_field), 1))
}

/// The four fields as JSON text, so a fault can replace one.
struct Fields {
    device_id: String,
    device_name: String,
    time: String,
    energy: String,
}

impl Fields {
    fn render(&self, firmware_field: bool) -> String {
        let mut text = format!(
            "{{\"device_id\":{},\"device_name\":{},\"time\":{},\"cumulative_energy\":{}",
            self.device_id, self.device_name, self.time, self.energy
        );
        if firmware_field {
            text.push_str(",\"firmware\":\"4.2.1\"");
        }
        text.push('}');
        text
    }
}

/// Wraps elements in a message, or spoils the whole message at a tenth of the fault rate.
fn finish_message(
    body: String,
    options: &GenerateOptions,
    rng: &mut ChaCha8Rng,
    stats: &mut GenerateStats,
) -> String {
    let message = format!("{{\"measurements\":[{body}]}}");
    if !rng.random_bool((options.fault_rate / 10.0).clamp(0.0, 1.0)) {
        return message;
    }
    stats.faulty_messages += 1;
    if rng.random_bool(0.5) {
        message[..message.len() / 2].to_owned()
    } else {
        format!("{{\"readings\":[{body}]}}")
    }
}

fn format_time(micros: i64, style: TimeStyle) -> String {
    let offset = match style {
        TimeStyle::HongKongOffset => 8 * 60 * MICROS_PER_MINUTE,
        _ => 0,
    };
    let Some(t) = DateTime::from_timestamp_micros(micros + offset) else {
        return String::from("invalid");
    };
    let mut text = String::with_capacity(29);
    let _ = write!(
        text,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    text.push_str(match style {
        TimeStyle::Utc => "Z",
        TimeStyle::HongKongOffset => "+08:00",
        TimeStyle::Milliseconds => ".000Z",
    });
    text
}

/// The README's seed example (device 123456, two readings), appended by
/// `generate --with-seed-example` and the demo so its rows can be shown.
pub const SEED_EXAMPLE: &str = r#"{"measurements": [{"device_id": 123456, "device_name": "Test Device", "time": "2022-07-11T02:15:00Z", "cumulative_energy": 120.12}, {"device_id": 123456, "device_name": "Test Device", "time": "2022-07-11T02:20:00Z", "cumulative_energy": 122.45}]}"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::parse_micros;

    fn options() -> GenerateOptions {
        GenerateOptions {
            devices: 20,
            hours: 2.0,
            interval: 5 * MICROS_PER_MINUTE,
            seed: 7,
            disorder: 4 * MICROS_PER_MINUTE,
            fault_rate: 0.05,
            duplicate_rate: 0.05,
            start: parse_micros("2022-07-11T00:00:00Z").unwrap(),
            devices_per_message: NonZeroU32::new(4).unwrap(),
        }
    }

    fn run(options: &GenerateOptions) -> (String, GenerateStats) {
        let mut out = Vec::new();
        let stats = generate(options, &mut out).unwrap();
        (String::from_utf8(out).unwrap(), stats)
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (a, stats) = run(&options());
        let (b, _) = run(&options());
        assert_eq!(a, b);
        let (c, _) = run(&GenerateOptions {
            seed: 8,
            ..options()
        });
        assert_ne!(a, c);
        assert_eq!(a.lines().count() as u64, stats.messages);
        assert!(stats.faulty_readings > 0 && stats.resent_messages > 0);
    }

    #[test]
    fn times_round_trip_in_every_style() {
        let t = parse_micros("2022-07-11T02:15:00Z").unwrap();
        for style in [
            TimeStyle::Utc,
            TimeStyle::HongKongOffset,
            TimeStyle::Milliseconds,
        ] {
            assert_eq!(parse_micros(&format_time(t, style)), Ok(t));
        }
        assert_eq!(
            format_time(t, TimeStyle::HongKongOffset),
            "2022-07-11T10:15:00+08:00"
        );
    }

    #[test]
    fn without_faults_every_line_is_valid_json_and_counts_agree() {
        let (text, stats) = run(&GenerateOptions {
            fault_rate: 0.0,
            ..options()
        });
        let mut readings = 0;
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            readings += value["measurements"].as_array().unwrap().len() as u64;
        }
        assert_eq!(readings, stats.readings);
        assert_eq!(stats.faulty_readings + stats.faulty_messages, 0);
    }
}
