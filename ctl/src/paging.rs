//! Following a listing page by page, as kubectl does: every list command
//! asks for pages of `--chunk-size` items and follows the coordinator's
//! page token until the listing ends or `--limit` items are shown.

use clap::Args;

/// `--limit` and `--chunk-size`, shared by every list command.
#[derive(Debug, Clone, Copy, Args)]
pub struct PageArgs {
    /// Show at most this many items (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Items asked of the coordinator per request (it also cuts a page
    /// before 2 MiB, whatever this says).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=5_000))]
    pub chunk_size: u32,
}

impl Default for PageArgs {
    fn default() -> Self {
        PageArgs { limit: 0, chunk_size: 500 }
    }
}

impl PageArgs {
    /// These, unless they are the defaults; then `other` (the same flags
    /// given before the subcommand).
    pub fn or(self, other: PageArgs) -> PageArgs {
        if self.limit == 0 && self.chunk_size == 500 { other } else { self }
    }
}

/// Where a listing stands: what to ask next, and when to stop.
#[derive(Debug)]
pub struct Pager {
    args: PageArgs,
    token: String,
    shown: usize,
    done: bool,
}

impl Pager {
    /// A listing from its start.
    pub fn new(args: PageArgs) -> Pager {
        Pager { args, token: String::new(), shown: 0, done: false }
    }

    /// The page size and token of the next request; `None` once the
    /// listing ended or the limit is reached.
    pub fn next_request(&self) -> Option<(u32, String)> {
        if self.done {
            return None;
        }
        let size = match self.args.limit {
            0 => self.args.chunk_size,
            limit => (limit - self.shown).min(self.args.chunk_size as usize) as u32,
        };
        Some((size, self.token.clone()))
    }

    /// Takes one answer: keeps the items the limit allows and notes where
    /// the next page starts. A coordinator that hands back the token it was
    /// given would never end the listing, so that is an error.
    pub fn take<T>(&mut self, mut items: Vec<T>, next_token: String) -> anyhow::Result<Vec<T>> {
        if self.args.limit != 0 {
            items.truncate(self.args.limit - self.shown);
        }
        self.shown += items.len();
        if !next_token.is_empty() && next_token == self.token {
            anyhow::bail!("the coordinator answered the same page token twice; the listing is incomplete");
        }
        self.done = next_token.is_empty() || (self.args.limit != 0 && self.shown >= self.args.limit);
        self.token = next_token;
        Ok(items)
    }
}

/// Follows a listing to its end: `$call` is a request expression using
/// `page_size` and `page_token`, `$items` the answer's field holding the
/// items. Evaluates to every item kept.
macro_rules! follow {
    ($ctx:expr, $args:expr, |$size:ident, $token:ident| $call:expr, $items:ident) => {{
        let mut pager = $crate::paging::Pager::new($args);
        let mut all = Vec::new();
        while let Some(($size, $token)) = pager.next_request() {
            let page = $call.await.map_err(|s| $ctx.explain(s))?.into_inner();
            all.extend(pager.take(page.$items, page.next_page_token)?);
        }
        all
    }};
}
pub(crate) use follow;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_followed_until_the_token_runs_out() {
        let mut pager = Pager::new(PageArgs { limit: 0, chunk_size: 2 });
        assert_eq!(pager.next_request(), Some((2, String::new())));
        assert_eq!(pager.take(vec![1, 2], "t1".into()).unwrap(), vec![1, 2]);
        assert_eq!(pager.next_request(), Some((2, "t1".into())));
        assert_eq!(pager.take(vec![3], String::new()).unwrap(), vec![3]);
        assert_eq!(pager.next_request(), None);
    }

    #[test]
    fn the_limit_caps_what_is_asked_and_shown() {
        let mut pager = Pager::new(PageArgs { limit: 3, chunk_size: 2 });
        assert_eq!(pager.take(vec![1, 2], "t1".into()).unwrap(), vec![1, 2]);
        assert_eq!(pager.next_request(), Some((1, "t1".into())), "only what the limit leaves");
        assert_eq!(pager.take(vec![3, 4], "t2".into()).unwrap(), vec![3]);
        assert_eq!(pager.next_request(), None);
    }

    #[test]
    fn a_repeated_token_is_an_error_not_an_endless_loop() {
        let mut pager = Pager::new(PageArgs::default());
        pager.take(vec![1], "t".into()).unwrap();
        assert!(pager.take(Vec::<u8>::new(), "t".into()).is_err());
    }
}
