//! Drawing `top`'s screen with ratatui: a header, the sortable table, a status line. Draws what
//! it is given and decides nothing.

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table},
};

use super::model::{Column, Header, TopRow};

/// Everything on the screen.
pub struct View<'a> {
    /// `python3.12 (pid 123, CPython 3.12)`.
    pub target: &'a str,
    pub elapsed_secs: f64,
    pub rate_hz: u64,
    /// `None` until the first refresh.
    pub header: Option<&'a Header>,
    pub rows: &'a [TopRow],
    pub sort: Column,
    pub lines: bool,
    pub native: bool,
    pub notice: Option<&'a str>,
}

pub fn draw(frame: &mut Frame, v: &View) {
    let [title, numbers, status, table] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(0),
    ])
    .areas(frame.area());

    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::from(format!("prof-bpf top: {}", v.target)).bold(),
            Span::from(format!("  {:.1}s", v.elapsed_secs)),
            Span::from("   keys: 1-4 sort, l lines, n native, q quit").dim(),
        ])),
        title,
    );
    let numbers_text = match v.header {
        Some(h) => {
            let gil = match (h.free_threaded, h.gil_pct) {
                (true, _) => "   free-threaded: no GIL".to_string(),
                (false, Some(g)) => format!("   GIL {g:.1}%"),
                (false, None) => String::new(),
            };
            format!(
                "Total Samples {}   Achieved {:.1} samples/s (--rate {})   Threads {}   Active {:.1}%{gil}",
                h.samples, h.achieved_rate, v.rate_hz, h.threads, h.active_pct
            )
        }
        None => "Collecting samples...".to_string(),
    };
    frame.render_widget(Paragraph::new(numbers_text), numbers);
    let status_line = match v.notice {
        Some(n) => Line::from(Span::from(n.to_string()).yellow()),
        None => Line::from(format!(
            "Sort: {}   Line numbers: {}   Native frames: {}",
            v.sort.title(),
            if v.lines { "on" } else { "off" },
            if v.native { "on" } else { "off" },
        )),
    };
    frame.render_widget(Paragraph::new(status_line), status);

    let header = Row::new(
        Column::ALL
            .iter()
            .map(|&c| {
                let cell = Cell::from(c.title());
                if c == v.sort {
                    cell.style(Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD))
                } else {
                    cell.style(Style::new().add_modifier(Modifier::BOLD))
                }
            })
            .chain([Cell::from(if v.lines {
                "Function (file:line)"
            } else {
                "Function (file)"
            })
            .style(Style::new().add_modifier(Modifier::BOLD))]),
    );
    let rows = v.rows.iter().map(|r| {
        Row::new([
            Cell::from(format!("{:>6.2}%", r.own_pct)),
            Cell::from(format!("{:>6.2}%", r.total_pct)),
            Cell::from(format!("{:>7.2}s", r.own_time)),
            Cell::from(format!("{:>8.2}s", r.total_time)),
            Cell::from(r.frame.label()),
        ])
    });
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(9),
                Constraint::Length(10),
                Constraint::Fill(1),
            ],
        )
        .header(header),
        table,
    );
}
