//! The web playground served at `/`: one static page (HTML, CSS and JavaScript in one file, no
//! build step, nothing fetched from elsewhere) compiled into the binary. It streams completions
//! or chat replies from this server's own API, has the decoding settings, and polls `/metrics`
//! for the live batch, queue and tokens/s.

pub const PLAYGROUND_HTML: &str = include_str!("playground.html");

#[cfg(test)]
mod tests {
    use super::PLAYGROUND_HTML;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for outside in ["http://", "https://", "//cdn", "<link", "src=\""] {
            assert!(
                !PLAYGROUND_HTML.contains(outside),
                "the playground must be self-contained, found {outside}"
            );
        }
        assert!(PLAYGROUND_HTML.contains("/v1/completions"));
        assert!(PLAYGROUND_HTML.contains("/metrics"));
    }
}
