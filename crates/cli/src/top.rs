//! `veto top`: the dashboard's view in the terminal, refreshed live.
//!
//! Every member is asked for its status and its edges (AdminService over
//! gRPC); propagation histograms from all members are merged per second.
//! [`collect`] gathers one [`View`]; [`draw`] renders it into any ratatui
//! backend (the test draws into ratatui's `TestBackend`).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Borders, Cell, Chart, Dataset, GraphType, Paragraph, Row, Table,
};
use ratatui::Frame;
use tonic::Request;
use veto_proto as pb;
use veto_proto::admin_service_client::AdminServiceClient;
use veto_proto::propagation;

/// One member as it answered (or did not).
#[derive(Debug, Clone)]
pub struct MemberView {
    /// Node id.
    pub id: u64,
    /// gRPC address.
    pub addr: String,
    /// Voter or learner.
    pub voter: bool,
    /// Its status, if it answered.
    pub status: Option<pb::StatusResponse>,
}

/// Everything one refresh shows.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Leader id (0 unknown) and term, from the highest term seen.
    pub leader: u64,
    /// Term.
    pub term: u64,
    /// Members in id order.
    pub members: Vec<MemberView>,
    /// Every edge on every member, by edge id.
    pub edges: Vec<pb::EdgeInfo>,
    /// Merged propagation: (unix s, p50 ms, p99 ms, samples).
    pub propagation: Vec<(i64, f64, f64, u64)>,
    /// Verify answers by outcome, summed over edges.
    pub verify_totals: BTreeMap<String, u64>,
    /// When it was collected.
    pub at_unix: i64,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn admin(addr: &str) -> Result<AdminServiceClient<tonic::transport::Channel>> {
    Ok(AdminServiceClient::new(crate::lazy_channel(addr)?))
}

fn timed<T>(m: T) -> Request<T> {
    let mut r = Request::new(m);
    r.set_timeout(Duration::from_secs(1));
    r
}

/// Asks the first reachable address for the membership, then every member
/// for its status and edges.
pub async fn collect(addrs: &[String]) -> Result<View> {
    let first = first_status(addrs).await?;
    let mem = first.membership.clone().unwrap_or_default();
    let mut members: Vec<MemberView> = mem
        .voters
        .iter()
        .map(|m| (m, true))
        .chain(mem.learners.iter().map(|m| (m, false)))
        .map(|(m, voter)| MemberView {
            id: m.node_id,
            addr: m.addr.clone(),
            voter,
            status: None,
        })
        .collect();
    members.sort_by_key(|m| m.id);
    let answers = ask_members(&members).await;
    let mut view = View {
        at_unix: unix_now(),
        ..Default::default()
    };
    let mut seconds = Vec::new();
    for (m, (s, e)) in members.iter_mut().zip(answers) {
        if let Some(s) = &s {
            if s.term >= view.term {
                view.term = s.term;
                view.leader = s.leader_id;
            }
        }
        m.status = s;
        if let Some(e) = e {
            seconds.extend(e.propagation.iter().map(propagation::Second::from_pb));
            view.edges.extend(e.edges);
        }
    }
    view.members = members;
    view.edges.sort_by(|a, b| a.edge_id.cmp(&b.edge_id));
    view.verify_totals = veto_proto::edges::verify_totals(&view.edges);
    view.propagation = propagation::merge(seconds)
        .iter()
        .map(|s| (s.unix_s, s.quantile_ms(0.5), s.quantile_ms(0.99), s.count()))
        .collect();
    Ok(view)
}

/// The status of the first address that answers.
async fn first_status(addrs: &[String]) -> Result<pb::StatusResponse> {
    let mut first = None;
    for a in addrs {
        if let Ok(mut c) = admin(a).await {
            if let Ok(s) = c.status(timed(pb::StatusRequest::default())).await {
                first = Some(s.into_inner());
                break;
            }
        }
    }
    first.ok_or_else(|| anyhow!("no node answered at {}", addrs.join(", ")))
}

/// Every member's status and edges, asked concurrently (`None` where a
/// member did not answer).
async fn ask_members(
    members: &[MemberView],
) -> Vec<(Option<pb::StatusResponse>, Option<pb::EdgesResponse>)> {
    let calls = members.iter().map(|m| {
        let addr = m.addr.clone();
        async move {
            let Ok(mut c) = admin(&addr).await else {
                return (None, None);
            };
            let s = c
                .status(timed(pb::StatusRequest::default()))
                .await
                .ok()
                .map(|r| r.into_inner());
            let e = c
                .edges(timed(pb::EdgesRequest::default()))
                .await
                .ok()
                .map(|r| r.into_inner());
            (s, e)
        }
    });
    futures::future::join_all(calls).await
}

/// The live state of `veto top`: the latest view and verify rates.
#[derive(Debug, Default)]
pub struct App {
    /// Latest view.
    pub view: View,
    /// Last error, shown in the title bar.
    pub error: Option<String>,
    prev: Option<(Instant, BTreeMap<String, u64>)>,
    /// Verify answers per second by outcome, from the last two refreshes.
    pub rates: BTreeMap<String, f64>,
    /// Total verifies per second over time (newest last).
    pub rate_history: VecDeque<u64>,
}

impl App {
    /// Takes a new view (or the error of a failed refresh).
    pub fn update(&mut self, v: Result<View>, now: Instant) {
        match v {
            Err(e) => self.error = Some(e.to_string()),
            Ok(v) => {
                self.error = None;
                if let Some((t, prev)) = &self.prev {
                    let dt = now.saturating_duration_since(*t).as_secs_f64();
                    if dt > 0.0 {
                        self.rates = v
                            .verify_totals
                            .iter()
                            .map(|(k, n)| {
                                let before = prev.get(k).copied().unwrap_or(0);
                                (k.clone(), n.saturating_sub(before) as f64 / dt)
                            })
                            .collect();
                        let total: f64 = self.rates.values().sum();
                        self.rate_history.push_back(total.round() as u64);
                        while self.rate_history.len() > 300 {
                            self.rate_history.pop_front();
                        }
                    }
                }
                self.prev = Some((now, v.verify_totals.clone()));
                self.view = v;
            }
        }
    }
}

fn role(s: &pb::StatusResponse) -> &'static str {
    match pb::Role::try_from(s.role).unwrap_or(pb::Role::Unspecified) {
        pb::Role::Leader => "leader",
        pb::Role::Follower => "follower",
        pb::Role::Candidate => "candidate",
        pb::Role::Learner => "learner",
        pb::Role::Shutdown => "shutdown",
        pb::Role::Unspecified => "unknown",
    }
}

fn fresh_style(ms: f64, connected: bool) -> Style {
    if !connected || !(0.0..2_000.0).contains(&ms) {
        Style::default().fg(Color::Red)
    } else if ms >= 1_000.0 {
        Style::default().fg(Color::Yellow)
    } else {
        Style::default().fg(Color::Green)
    }
}

/// Renders `app` into the frame.
pub fn draw(f: &mut Frame, app: &App) {
    let v = &app.view;
    let area = f.area();
    let [title, members, edges, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(v.members.len().clamp(1, 9) as u16 + 3),
        Constraint::Min(5),
        Constraint::Length(12),
    ])
    .areas(area);
    draw_title(f, title, app);
    draw_members(f, members, v);
    draw_edges(f, edges, v);
    let [chart_area, rates_area] =
        Layout::horizontal([Constraint::Percentage(65), Constraint::Percentage(35)]).areas(bottom);
    draw_propagation(f, chart_area, v);
    draw_rates(f, rates_area, app);
}

fn draw_title(f: &mut Frame, title: Rect, app: &App) {
    let v = &app.view;
    let head = match &app.error {
        Some(e) => Line::from(vec![
            Span::styled(" veto top ", Style::default().add_modifier(Modifier::BOLD)),
            Span::styled(format!(" error: {e}"), Style::default().fg(Color::Red)),
        ]),
        None => Line::from(vec![
            Span::styled(" veto top ", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                " leader {}  term {}  members {}  edges {}   (q to quit)",
                if v.leader == 0 {
                    "none".to_string()
                } else {
                    v.leader.to_string()
                },
                v.term,
                v.members.len(),
                v.edges.len()
            )),
        ]),
    };
    f.render_widget(Paragraph::new(head), title);
}

fn draw_members(f: &mut Frame, members: Rect, v: &View) {
    let rows = v.members.iter().map(|m| {
        let (state, commit, applied, tokens) = match &m.status {
            Some(s) => (
                role(s).to_string(),
                s.commit_index.to_string(),
                s.applied_index.to_string(),
                s.tokens.to_string(),
            ),
            None => ("unreachable".into(), "-".into(), "-".into(), "-".into()),
        };
        let style = if state == "leader" {
            Style::default().add_modifier(Modifier::BOLD)
        } else if state == "unreachable" {
            Style::default().fg(Color::Red)
        } else {
            Style::default()
        };
        Row::new(vec![
            Cell::from(m.id.to_string()),
            Cell::from(m.addr.clone()),
            Cell::from(if m.voter { "voter" } else { "learner" }),
            Cell::from(state),
            Cell::from(commit),
            Cell::from(applied),
            Cell::from(tokens),
        ])
        .style(style)
    });
    let t = Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Length(22),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
        ],
    )
    .header(
        Row::new(["id", "addr", "role", "state", "commit", "applied", "tokens"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::default().borders(Borders::ALL).title(" members "));
    f.render_widget(t, members);
}

fn draw_edges(f: &mut Frame, edges: Rect, v: &View) {
    let rows = v.edges.iter().map(|e| {
        let total: u64 = e.verify_counts.values().sum();
        Row::new(vec![
            Cell::from(e.edge_id.clone()),
            Cell::from(e.node_id.to_string()),
            Cell::from(if e.connected { "yes" } else { "no" }),
            Cell::from(e.applied_revision.to_string()),
            Cell::from(e.lag_revisions.to_string()),
            Cell::from(format!("{:.1}", e.lag_ms)),
            Cell::from(if e.fresh_age_ms < 0.0 {
                "never".to_string()
            } else {
                format!("{:.0}", e.fresh_age_ms)
            })
            .style(fresh_style(e.fresh_age_ms, e.connected)),
            Cell::from(total.to_string()),
        ])
    });
    let t = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(5),
            Constraint::Length(5),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(10),
        ],
    )
    .header(
        Row::new([
            "edge", "node", "conn", "applied", "lag rev", "lag ms", "fresh ms", "verifies",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::default().borders(Borders::ALL).title(" edges "));
    f.render_widget(t, edges);
}

fn draw_rates(f: &mut Frame, rates_area: Rect, app: &App) {
    let v = &app.view;
    let rows = app.rates.iter().map(|(k, r)| {
        Row::new(vec![
            Cell::from(k.clone()),
            Cell::from(format!("{r:.0}/s")),
            Cell::from(v.verify_totals.get(k).copied().unwrap_or(0).to_string()),
        ])
    });
    let t = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(9),
            Constraint::Length(10),
        ],
    )
    .header(
        Row::new(["outcome", "rate", "total"]).style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(" verify by outcome "),
    );
    f.render_widget(t, rates_area);
}

fn draw_propagation(f: &mut Frame, area: Rect, v: &View) {
    let window = propagation::WINDOW_S as f64;
    let pts = |pick: fn(&(i64, f64, f64, u64)) -> f64| -> Vec<(f64, f64)> {
        v.propagation
            .iter()
            .map(|p| (-((v.at_unix - p.0) as f64).clamp(0.0, window), pick(p)))
            .collect()
    };
    let p50 = pts(|p| p.1);
    let p99 = pts(|p| p.2);
    let top = p99.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
    let last = v
        .propagation
        .last()
        .map(|p| {
            format!(
                " propagation, all edges: p50 {:.1} ms  p99 {:.1} ms ",
                p.1, p.2
            )
        })
        .unwrap_or_else(|| " propagation, all edges: no samples yet ".to_string());
    let chart = Chart::new(vec![
        Dataset::default()
            .name("p50")
            .marker(symbols::Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Cyan))
            .data(&p50),
        Dataset::default()
            .name("p99")
            .marker(symbols::Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Yellow))
            .data(&p99),
    ])
    .block(Block::default().borders(Borders::ALL).title(last))
    .x_axis(Axis::default().bounds([-window, 0.0]).labels(vec![
        Line::from(format!("-{window:.0}s")),
        Line::from("now"),
    ]))
    .y_axis(
        Axis::default()
            .bounds([0.0, top])
            .labels(vec![Line::from("0"), Line::from(format!("{top:.1} ms"))]),
    );
    f.render_widget(chart, area);
}

/// Runs the live view until `q`, Esc or Ctrl-C.
pub async fn run(addrs: Vec<String>, interval: Duration) -> Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
    let mut terminal = ratatui::try_init()?;
    let mut app = App::default();
    let result = async {
        loop {
            let v = collect(&addrs).await;
            app.update(v, Instant::now());
            terminal.draw(|f| draw(f, &app))?;
            let quit = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
                let until = Instant::now() + interval;
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() || !event::poll(left)? {
                        return Ok(false);
                    }
                    if let Event::Key(k) = event::read()? {
                        let ctrl_c = k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL);
                        if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                            return Ok(true);
                        }
                    }
                }
            })
            .await??;
            if quit {
                return anyhow::Ok(());
            }
        }
    }
    .await;
    ratatui::try_restore()?;
    result
}
