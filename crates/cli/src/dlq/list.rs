//! `dlq list` and `dlq show`: they fetch dead letters, look, and give every one back.

use std::io::Write;

use super::letter::Summary;
use super::render::write_table;
use super::{Ctx, DlqError, dead_letters};

pub(super) async fn list(
    ctx: &Ctx<'_>,
    limit: usize,
    json: bool,
    out: &mut (impl Write + Send),
) -> Result<(), DlqError> {
    let total = ctx.count().await?;
    // Bounded by what is there now: `basic.get` answers at once, empty or not, so an empty queue
    // costs one round trip and newcomers do not keep the listing going.
    let want = limit.min(usize::try_from(total).unwrap_or(usize::MAX));
    let mut letters = Vec::with_capacity(want);
    while letters.len() < want {
        match ctx.get().await? {
            Some(letter) => letters.push(letter),
            None => break,
        }
    }
    ctx.give_back(letters.last().map(|l| l.tag)).await?;

    let summaries: Vec<Summary> = letters.iter().map(|l| l.summary(ctx.topology)).collect();
    if json {
        for s in &summaries {
            let line = serde_json::to_string(s).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    if total == 0 {
        writeln!(out, "no dead letters")?;
        return Ok(());
    }
    write_table(out, &summaries)?;
    if summaries.len() < usize::try_from(total).unwrap_or(usize::MAX) {
        writeln!(
            out,
            "{} of {} shown (--limit)",
            summaries.len(),
            dead_letters(total.into())
        )?;
    } else {
        writeln!(out, "{}", dead_letters(total.into()))?;
    }
    Ok(())
}

pub(super) async fn show(
    ctx: &Ctx<'_>,
    id: &str,
    out: &mut (impl Write + Send),
) -> Result<(), DlqError> {
    let total = ctx.count().await?;
    // The whole queue is looked at: the same event can be dead-lettered twice (e.g. a replay
    // whose ack was lost), and every copy is shown.
    let mut found = Vec::new();
    let mut last_tag = None;
    for _ in 0..total {
        let Some(letter) = ctx.get().await? else {
            break;
        };
        last_tag = Some(letter.tag);
        if letter.id == id {
            found.push(letter);
        }
    }
    ctx.give_back(last_tag).await?;
    if found.is_empty() {
        return Err(DlqError::NotFound(id.to_owned()));
    }
    for (i, letter) in found.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        out.write_all(letter.render(ctx.topology).as_bytes())?;
    }
    Ok(())
}
