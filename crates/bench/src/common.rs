//! Rows, context and output shared by the subcommands: the machine, memory, CPU, the
//! Salesforce check, writing the files.

use anyhow::Result;
use serde_json::{Value, json};

use crate::procfs::{self, CpuUsage};
use crate::report::{self, Goal, Table};
use crate::stack::Stack;
use crate::verify::Verification;

/// The targets shared by several subcommands.
pub const TARGET_CALLS_PER_1000: f64 = 6.0;
pub const TARGET_RSS_MIB: f64 = 64.0;

fn load_text(load: Option<[f64; 3]>) -> String {
    load.map_or_else(|| "?".to_owned(), |l| format!("{:.2}", l[0]))
}

/// Context lines: cores, load, how busy the machine was, which binaries.
pub fn machine_context(
    t: &mut Table,
    stack: &Stack,
    before: Option<[f64; 3]>,
    after: Option<[f64; 3]>,
    cpu: &CpuUsage,
) {
    let busy = cpu.machine_busy.map_or_else(String::new, |b| {
        format!(
            "; all cores {:.0}% busy during the run (anyone's work)",
            b * 100.0
        )
    });
    t.context(format!(
        "machine: {} cores, 1-min load {} before, {} after{busy}",
        procfs::cores(),
        load_text(before),
        load_text(after)
    ));
    let profile = stack.profile();
    let warning = if profile == "release" {
        ""
    } else {
        " — NOT release binaries: figures are not comparable"
    };
    t.context(format!(
        "binaries: {} ({profile}){warning}",
        stack.bin_dir.display()
    ));
    if !stack.args.env.is_empty() {
        let env: Vec<String> = stack
            .args
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        t.context(format!("service environment: {}", env.join(" ")));
    }
}

pub fn machine_json(
    stack: &Stack,
    before: Option<[f64; 3]>,
    after: Option<[f64; 3]>,
    cpu: &CpuUsage,
) -> Value {
    json!({
        "cores": procfs::cores(),
        "loadavg_before": before,
        "loadavg_after": after,
        "cpu_busy_share": cpu.machine_busy,
        "cpu_seconds": cpu.seconds,
        "cpu_window_s": cpu.wall_s,
        "bin_dir": stack.bin_dir.display().to_string(),
        "profile": stack.profile(),
        "database": stack.database,
        "namespace": stack.namespace,
    })
}

/// Peak RSS per service; those in `no_target` (the emulator: a stand-in) get no target.
pub fn rss_rows(t: &mut Table, rss: &[(String, Option<u64>)], no_target: &[&str]) {
    for (name, kib) in rss {
        let Some(kib) = kib else {
            t.info(format!("peak RSS {name}"), "?");
            continue;
        };
        let mib = *kib as f64 / 1024.0;
        if no_target.contains(&name.as_str()) {
            t.info(
                format!("peak RSS {name} (stand-in)"),
                format!("{mib:.1} MiB"),
            );
        } else {
            t.target(
                format!("peak RSS {name}"),
                mib,
                format!("{mib:.1} MiB"),
                Goal::AtMost(TARGET_RSS_MIB),
                "<= 64 MiB",
            );
        }
    }
}

pub fn rss_json(rss: &[(String, Option<u64>)]) -> Value {
    Value::Object(
        rss.iter()
            .map(|(name, kib)| {
                (
                    name.clone(),
                    kib.map_or(Value::Null, |k| {
                        json!(crate::stats::round(k as f64 / 1024.0))
                    }),
                )
            })
            .collect(),
    )
}

/// CPU seconds per process over the run, and per order.
pub fn cpu_rows(t: &mut Table, cpu: &CpuUsage, orders: usize) {
    for (name, secs) in &cpu.seconds {
        let per_order = if orders > 0 {
            format!(", {:.2} ms/order", secs * 1e3 / orders as f64)
        } else {
            String::new()
        };
        t.info(
            format!("CPU {name}"),
            format!(
                "{secs:.1} s ({:.0}% of a core{per_order})",
                100.0 * secs / cpu.wall_s.max(1e-9)
            ),
        );
    }
}

pub fn verification_rows(t: &mut Table, v: &Verification) {
    t.check(
        "lost: accepted, no Salesforce Order",
        v.missing.len().to_string(),
        v.missing.is_empty(),
    );
    t.check(
        "duplicated: external id on > 1 Salesforce Order",
        v.duplicated.len().to_string(),
        v.duplicated.is_empty(),
    );
    t.check(
        "unexpected: Salesforce Order for no accepted order",
        v.unexpected.len().to_string(),
        v.unexpected.is_empty(),
    );
    t.check(
        "order lines missing / duplicated / unexpected in Salesforce",
        format!(
            "{} / {} / {}",
            v.items_missing, v.items_duplicated, v.items_unexpected
        ),
        v.items_missing == 0 && v.items_duplicated == 0 && v.items_unexpected == 0,
    );
}

/// Writes the files, prints the table; `Ok(false)` when a correctness check failed.
pub fn finish(stack: &Stack, t: &Table, json: &Value, charts: &[(&str, String)]) -> Result<bool> {
    let written = report::write(&stack.out, t, json, charts)?;
    println!("{}", t.render());
    for path in written {
        println!("wrote {}", path.display());
    }
    println!("service logs: {}", stack.out.join("logs").display());
    Ok(!t.failed())
}
