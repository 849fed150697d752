//! studio-relay-bench: load generator for studio-relay and its peers.
//!
//! Opens N clients against a target (studio-relay, the Node Socket.IO / ws
//! peers, or raw Redis subscribers), PUBLISHes timestamped, sequenced
//! payloads to Redis and measures what arrives. See bench/README.md.

mod clients;
mod payload;
mod procfs;
mod publisher;
mod report;
mod tls;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use studio_relay_bench::resp::RedisUrl;
use tokio::sync::Semaphore;

use crate::clients::{run_client, Ctx, BCAST_IDLE, BCAST_WARMUP, SOCKUDO_APP_ID, SOCKUDO_CHANNEL};
use crate::payload::Dest;
use crate::publisher::Publisher;

/// What is being measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// studio-relay (`/ws?agentId=…` or `/ws?all=true`; ready on `welcome`).
    Studio,
    /// Socket.IO over WebSocket (the Node peer socketio-relay.js, with or
    /// without ROOMS=1, or studio-relay's own Socket.IO).
    Socketio,
    /// Socket.IO over HTTP long-polling (Engine.IO `transport=polling`, one
    /// keep-alive connection per client for its GETs and POSTs).
    SocketioPolling,
    /// The minimal Node ws peer (ws-relay.js); no ready frame, so a warm-up
    /// broadcast is used.
    Ws,
    /// N raw Redis subscribers (PSUBSCRIBE) on --redis: the floor.
    Redis,
    /// Sockudo (Pusher protocol 7, app key `bench-key`): each client
    /// subscribes to channel `a<k>` (`all` for firehose), fed through its
    /// Redis adapter (`sockudo_adapter::#broadcast`, app id `bench-app`).
    Sockudo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// All clients firehose; publish flat out for --duration.
    Fanout,
    /// Client i subscribed to agent i % --agents; events round-robin over
    /// agents, flat out.
    Routed,
    /// Firehose clients; publish at a fixed --rate events/s.
    Rate,
    /// N idle clients: relay RSS per connection, then one broadcast.
    Idle,
}

#[derive(Parser, Debug)]
#[command(
    name = "studio-relay-bench",
    version,
    about = "Load generator for studio-relay and its peers"
)]
struct Args {
    /// Which relay is being measured.
    #[arg(long, value_enum, default_value = "studio")]
    target: Target,
    #[arg(long, value_enum, default_value = "fanout")]
    scenario: Scenario,
    /// host:port of the relay's listener (ignored for --target redis).
    #[arg(long, default_value = "127.0.0.1:4456")]
    url: String,
    /// Redis to PUBLISH to (and to subscribe to for --target redis).
    #[arg(long, required_unless_present_any = ["summarize", "gen_cert"])]
    redis: Option<String>,
    /// Number of clients.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Number of agents (routed: client i follows agent i % agents; other
    /// scenarios: events still carry agentId round-robin over this many).
    #[arg(long)]
    agents: Option<u32>,
    /// Size of each published payload.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// Publishing time in seconds (fanout, routed, rate).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Events per second for --scenario rate (and routed with --paced).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Routed: publish at --rate events/s instead of flat out, so every
    /// target gets the same offered load and latencies compare at equal
    /// throughput (flat out, a closed loop's latency is its window over
    /// its throughput).
    #[arg(long)]
    paced: bool,
    /// PID of the target process to measure (for --target redis: redis-server).
    #[arg(long)]
    pid: Option<u32>,
    /// Number of loopback source addresses (127.0.0.1..=K) the clients bind
    /// to, so 100k connections do not exhaust ephemeral ports.
    /// Default: ceil(clients / 20000).
    #[arg(long)]
    source_addrs: Option<u32>,
    /// Print only the RESULT line.
    #[arg(long)]
    json_only: bool,
    /// Name of the run in the RESULT line (default: the target's name).
    #[arg(long)]
    label: Option<String>,
    /// Channel to PUBLISH on.
    #[arg(long, default_value = "claude-studio:bench")]
    channel: String,
    /// Publish as a Socket.IO server's `io.emit(<channel's event>, payload)`
    /// through @socket.io/redis-adapter (MessagePack on `socket.io#/#`)
    /// instead of JSON on --channel; the relay needs `socketio_adapter = true`.
    #[arg(long)]
    adapter: bool,
    /// Pattern raw Redis subscribers PSUBSCRIBE to.
    #[arg(long, default_value = "claude-studio:*")]
    pattern: String,
    /// Max PUBLISH commands awaiting Redis's reply (pipelining window).
    #[arg(long, default_value_t = 64)]
    pipeline: usize,
    /// Flat-out scenarios: max events in flight end to end (published but not
    /// yet received by every client that wants them), so the publisher can
    /// not outrun the relay unboundedly. 0 = only the --pipeline bound.
    /// The default equals --pipeline's: Redis answers a PUBLISH only after
    /// its fan-out, so raw Redis never has more than the pipeline in
    /// flight, while a relay's copy leaves Redis at once; a larger window
    /// gave every relay more events in flight than Redis, and with them
    /// latency (a closed loop's latency is its window over its throughput).
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Seconds to wait for all clients to be ready.
    #[arg(long, default_value_t = 120.0)]
    ready_timeout: f64,
    /// Seconds of the same traffic before the measured run (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Idle: seconds to wait for the broadcast to reach every client.
    #[arg(long, default_value_t = 10.0)]
    idle_wait: f64,
    /// Per-client read buffer (WebSocket and RESP clients), reserved on
    /// each read: small, so 100k idle clients fit in memory.
    #[arg(long, default_value_t = 8192)]
    read_buffer: usize,
    /// Worker threads of the load generator's runtime (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Instead of running: read RESULT lines from these files and print a
    /// summary table with ratios against the `studio` runs.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    summarize: Option<Vec<PathBuf>>,
    /// Connect with `wss://`, trusting only the certificate(s) in this PEM
    /// file (targets studio and socketio).
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Instead of running: write a throwaway self-signed certificate for
    /// 127.0.0.1 / ::1 / localhost as DIR/cert.pem and DIR/key.pem.
    #[arg(long, value_name = "DIR")]
    gen_cert: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.gen_cert {
        return match tls::gen_cert(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(files) = &args.summarize {
        return match report::summarize(files) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(t) = args.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(run(&args));
    // Do not wait for 100k client tasks to unwind; the OS closes the sockets.
    rt.shutdown_background();
    match res {
        Ok(v) => {
            if !args.json_only {
                report::print_table(&v);
            }
            println!("RESULT {v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(args: &Args, msg: &str) {
    if !args.json_only {
        eprintln!("[bench] {msg}");
    }
}

async fn run(args: &Args) -> Result<Value> {
    let n = args.clients;
    if n == 0 {
        bail!("--clients must be at least 1");
    }
    let firehose = matches!(args.scenario, Scenario::Fanout | Scenario::Rate);
    let agents = args.agents.unwrap_or(match args.scenario {
        Scenario::Routed | Scenario::Idle => 100,
        _ => 1,
    });
    let k = args
        .source_addrs
        .unwrap_or(n.div_ceil(20_000).max(1) as u32);
    let nofile = procfs::raise_nofile(n as u64 + 1024);
    if nofile < n as u64 + 64 {
        progress(
            args,
            &format!("warning: open-file limit {nofile} is below {n} clients; raise `ulimit -n`"),
        );
    }
    let redis = RedisUrl::parse(args.redis.as_deref().context("--redis is required")?)?;
    let target_addr = match args.target {
        Target::Redis => redis.resolve().await?,
        _ => tokio::net::lookup_host(&args.url)
            .await
            .with_context(|| format!("resolving --url {}", args.url))?
            .next()
            .context("--url resolves to nothing")?,
    };
    let mut ctx = Ctx::new(
        args.target,
        args.url.clone(),
        target_addr,
        redis.clone(),
        args.pattern.clone(),
        agents,
        firehose,
        k,
        args.read_buffer,
    )?;
    // Raw Redis on the routed job routes by channel, one per agent, the way
    // an application without a relay would use it.
    let per_agent = args.target == Target::Redis && args.scenario == Scenario::Routed;
    if per_agent {
        ctx.agent_channels = Some(args.channel.clone());
    }
    if let Some(ca) = &args.tls_ca {
        if !matches!(args.target, Target::Studio | Target::Socketio) {
            bail!("--tls-ca works with --target studio or socketio");
        }
        ctx.tls = Some(tls::connector(ca)?);
    }
    let ctx = Arc::new(ctx);
    let sample_target = || args.pid.map(|p| procfs::sample(Some(p))).transpose();
    let target_pre = sample_target()?;
    let self_pre = procfs::sample(None)?;

    // --- connect ---------------------------------------------------------
    progress(
        args,
        &format!(
            "connecting {n} clients ({:?}, {k} source address(es))",
            args.target
        ),
    );
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let t_conn = Instant::now();
    for i in 0..n {
        tokio::spawn(run_client(ctx.clone(), i, gate.clone()));
    }
    let mut last_print = Instant::now();
    loop {
        let (r, f) = (
            ctx.ready.load(Ordering::Relaxed),
            ctx.failed.load(Ordering::Relaxed),
        );
        if r + f >= n || t_conn.elapsed().as_secs_f64() > args.ready_timeout {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            progress(
                args,
                &format!(
                    "  {r} ready, {f} failed after {:.1} s",
                    t_conn.elapsed().as_secs_f64()
                ),
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = t_conn.elapsed().as_secs_f64();
    let ready = ctx.ready.load(Ordering::Relaxed);
    progress(args, &format!("{ready}/{n} ready in {connect_s:.2} s"));
    if ready == 0 {
        bail!("no client became ready; errors: {}", errors_json(&ctx));
    }

    let mut publisher = if args.adapter {
        let event = args.channel.rsplit(':').next().unwrap_or("bench");
        Publisher::connect(&redis, "socket.io#/#", args.pipeline, args.payload_bytes)
            .await?
            .adapter(event)
    } else if args.target == Target::Sockudo {
        Publisher::connect(&redis, SOCKUDO_CHANNEL, args.pipeline, args.payload_bytes)
            .await?
            .sockudo(SOCKUDO_APP_ID, firehose)
    } else {
        let p =
            Publisher::connect(&redis, &args.channel, args.pipeline, args.payload_bytes).await?;
        if per_agent {
            p.per_agent()
        } else {
            p
        }
    };
    let mut warmup = Value::Null;
    if args.target == Target::Ws {
        // No ready frame: a broadcast every client must receive first.
        let t = Instant::now();
        let got = warm_up(&ctx, &mut publisher, ready).await?;
        warmup = json!({"received": got, "seconds": round(t.elapsed().as_secs_f64(), 3)});
        progress(
            args,
            &format!("warm-up broadcast reached {got}/{ready} clients"),
        );
        publisher.published = 0;
    }

    let mut out = json!({
        "target": format!("{:?}", args.target).to_lowercase(),
        "label": args.label.clone().unwrap_or_else(|| format!("{:?}", args.target).to_lowercase()),
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "tls": args.tls_ca.is_some(),
        "clients": n,
        "ready": ready,
        "connect_failed": ctx.failed.load(Ordering::Relaxed),
        "agents": agents,
        "firehose": firehose,
        "payload_bytes": args.payload_bytes,
        "source_addrs": k,
        "connect_s": round(connect_s, 3),
        "connect_per_s": round(ready as f64 / connect_s.max(1e-9), 0),
        "pid": args.pid,
    });
    if !warmup.is_null() {
        out["warmup"] = warmup;
    }
    let extra = match args.scenario {
        Scenario::Idle => idle(args, &ctx, &mut publisher, ready, target_pre, self_pre).await?,
        _ => traffic(args, &ctx, &mut publisher).await?,
    };
    if let (Value::Object(o), Value::Object(e)) = (&mut out, extra) {
        o.extend(e);
    }
    out["disconnected"] = json!(ctx.closed.load(Ordering::Relaxed));
    out["errors"] = errors_json(&ctx);
    if let Some(e) = publisher.last_error() {
        out["publish_error"] = json!(e);
    }
    Ok(out)
}

fn errors_json(ctx: &Ctx) -> Value {
    ctx.errors.lock().map(|e| json!(*e)).unwrap_or(Value::Null)
}

pub fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

async fn publish_one(p: &mut Publisher, dest: Dest, seq: u64) -> Result<()> {
    p.reserve(1).await?;
    p.push(dest, seq);
    p.flush().await
}

async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publishes the warm-up broadcast (again every second) until every ready
/// client has it, for at most 30 s. Returns how many got it.
async fn warm_up(ctx: &Ctx, p: &mut Publisher, ready: usize) -> Result<usize> {
    let got = || ctx.bcast_got[BCAST_WARMUP as usize].load(Ordering::Relaxed);
    for _ in 0..30 {
        publish_one(p, Dest::Broadcast, BCAST_WARMUP).await?;
        if wait_until(Duration::from_secs(1), || got() >= ready).await {
            break;
        }
    }
    Ok(got())
}

fn latency_json(ctx: &Ctx) -> Result<Value> {
    let h = ctx.histogram()?;
    if h.is_empty() {
        return Ok(Value::Null);
    }
    Ok(json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": round(h.mean(), 1),
        "count": h.len(),
    }))
}

fn cpu_json(
    out: &mut Value,
    pre: Option<procfs::Sample>,
    post: Option<procfs::Sample>,
    self_pre: procfs::Sample,
    self_post: procfs::Sample,
    wall: f64,
) {
    if let (Some(a), Some(b)) = (pre, post) {
        let cpu = b.cpu_s - a.cpu_s;
        out["target_cpu_s"] = json!(round(cpu, 3));
        out["target_cpu_pct"] = json!(round(100.0 * cpu / wall.max(1e-9), 1));
        out["target_rss_kb"] = json!(b.rss_kb);
        out["target_hwm_kb"] = json!(b.hwm_kb);
    }
    let cpu = self_post.cpu_s - self_pre.cpu_s;
    out["loadgen_cpu_s"] = json!(round(cpu, 3));
    out["loadgen_cpu_pct"] = json!(round(100.0 * cpu / wall.max(1e-9), 1));
    out["loadgen_rss_kb"] = json!(self_post.rss_kb);
}

const BATCH: usize = 64;

/// The event stream: event k goes to agent k % A with that agent's seq
/// k / A + 1, across phases (warm-up and measured run).
struct Gen {
    k: u64,
    agents: u32,
    /// Clients ready at the start, per agent (expected deliveries).
    static_for: Vec<u64>,
}

/// What one publishing phase did.
struct Phase {
    start: Instant,
    pub_s: f64,
    published: u64,
    exp_static: u64,
    exp_live: u64,
    delivered0: u64,
}

impl Gen {
    fn push_n(&mut self, ctx: &Ctx, p: &mut Publisher, ph: &mut Phase, n: usize) {
        let agents = u64::from(self.agents);
        for _ in 0..n {
            let a = (self.k % agents) as u32;
            p.push(Dest::Agent(a), self.k / agents + 1);
            ph.exp_static += self.static_for[a as usize];
            ph.exp_live += ctx.live_for(a);
            ph.published += 1;
            self.k += 1;
        }
    }
}

/// Whether events go out at --rate (rate, and routed with --paced).
fn paced(args: &Args) -> bool {
    args.scenario == Scenario::Rate || (args.scenario == Scenario::Routed && args.paced)
}

/// Publishes for `dur`: at --rate for the rate scenario, else flat out
/// within the end-to-end window.
async fn publish_phase(
    args: &Args,
    ctx: &Ctx,
    p: &mut Publisher,
    gen: &mut Gen,
    dur: Duration,
) -> Result<Phase> {
    let per_event = (gen.static_for.iter().sum::<u64>() / u64::from(gen.agents)).max(1);
    let window_deliveries = args.window.saturating_mul(per_event);
    let delivered0 = ctx.delivered();
    let start = Instant::now();
    let mut ph = Phase {
        start,
        pub_s: 0.0,
        published: 0,
        exp_static: 0,
        exp_live: 0,
        delivered0,
    };
    match args.scenario {
        _ if paced(args) => {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let el = start.elapsed();
                if el >= dur {
                    break;
                }
                let due = (args.rate as f64 * el.as_secs_f64()) as u64;
                while ph.published < due {
                    let want = usize::try_from(due - ph.published)
                        .unwrap_or(BATCH)
                        .min(BATCH);
                    let n = p.reserve(want).await?;
                    gen.push_n(ctx, p, &mut ph, n);
                    p.flush().await?;
                }
            }
        }
        _ => 'outer: loop {
            if start.elapsed() >= dur {
                break;
            }
            // Only as many events as the window has room for: topping it
            // up by a whole batch let a relay (whose PUBLISH is answered
            // before its fan-out) hold up to window + batch in flight,
            // twice what the pipeline allows raw Redis.
            let mut room = BATCH;
            if args.window > 0 {
                loop {
                    let in_flight = ph.exp_live.saturating_sub(ctx.delivered() - delivered0);
                    let free = window_deliveries.saturating_sub(in_flight) / per_event;
                    if free > 0 {
                        room = usize::try_from(free).unwrap_or(BATCH).min(BATCH);
                        break;
                    }
                    if start.elapsed() >= dur {
                        break 'outer;
                    }
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
            }
            let n = p.reserve(room).await?;
            gen.push_n(ctx, p, &mut ph, n);
            p.flush().await?;
        },
    }
    ph.pub_s = start.elapsed().as_secs_f64();
    Ok(ph)
}

/// Waits until everything expected arrived, or nothing new for 1 s (at most
/// 60 s). Returns the time of the last observed delivery.
async fn drain(ctx: &Ctx, ph: &Phase) -> Instant {
    let mut prev = ctx.delivered() - ph.delivered0;
    let mut last_change = Instant::now();
    let drain_start = Instant::now();
    loop {
        let d = ctx.delivered() - ph.delivered0;
        if d != prev {
            prev = d;
            last_change = Instant::now();
        }
        if d >= ph.exp_live {
            return Instant::now();
        }
        if last_change.elapsed() > Duration::from_secs(1)
            || drain_start.elapsed() > Duration::from_secs(60)
        {
            return last_change;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// fanout / routed / rate.
async fn traffic(args: &Args, ctx: &Ctx, p: &mut Publisher) -> Result<Value> {
    let agents = ctx.agents;
    // Expected deliveries count the clients ready at the start; the flow
    // control counts the ones still connected.
    let static_for: Vec<u64> = (0..agents).map(|a| ctx.live_for(a)).collect();
    let mut gen = Gen {
        k: 0,
        agents,
        static_for,
    };
    if args.warmup_secs > 0.0 {
        // Same traffic, not measured: JIT warm-up for the Node peers, buffers
        // and allocator pools grown for everyone.
        progress(
            args,
            &format!("warm-up traffic for {:.1} s", args.warmup_secs),
        );
        let ph = publish_phase(
            args,
            ctx,
            p,
            &mut gen,
            Duration::from_secs_f64(args.warmup_secs),
        )
        .await?;
        p.wait_replies(Duration::from_secs(10)).await;
        drain(ctx, &ph).await;
    }
    let dur = Duration::from_secs_f64(args.duration.max(0.0));
    let base = |f: fn(&clients::Shard) -> &std::sync::atomic::AtomicU64| ctx.sum(f);
    let (wasted0, dup0, ooo0) = (
        base(|s| &s.wasted),
        base(|s| &s.duplicates),
        base(|s| &s.out_of_order),
    );
    let receivers0 = p.stats.receivers.load(Ordering::Relaxed);
    ctx.reset_histograms();
    let pre = args.pid.map(|pid| procfs::sample(Some(pid))).transpose()?;
    let self_pre = procfs::sample(None)?;
    progress(args, &format!("publishing for {:.1} s", dur.as_secs_f64()));
    let ph = publish_phase(args, ctx, p, &mut gen, dur).await?;
    let (pub_s, published, exp_static) = (ph.pub_s, ph.published, ph.exp_static);
    progress(
        args,
        &format!("published {published} in {pub_s:.2} s; draining"),
    );
    let replies_ok = p.wait_replies(Duration::from_secs(10)).await;
    let last_delivery = drain(ctx, &ph).await;
    let wall = ph.start.elapsed().as_secs_f64();
    let post = args.pid.map(|pid| procfs::sample(Some(pid))).transpose()?;
    let self_post = procfs::sample(None)?;
    let delivered = ctx.delivered() - ph.delivered0;
    // Delivery window: from the first publish to the last observed delivery.
    let deliver_s = last_delivery
        .duration_since(ph.start)
        .as_secs_f64()
        .max(pub_s);

    let wasted = base(|s| &s.wasted) - wasted0;
    let lost = exp_static.saturating_sub(delivered);
    let mut out = json!({
        "duration_s": round(pub_s, 3),
        "warmup_s": args.warmup_secs,
        "published": published,
        "publish_per_s": round(published as f64 / pub_s.max(1e-9), 1),
        "target_rate": if paced(args) { json!(args.rate) } else { Value::Null },
        "window": if paced(args) { Value::Null } else { json!(args.window) },
        "redis_receivers": p.stats.receivers.load(Ordering::Relaxed) - receivers0,
        "publish_replies_complete": replies_ok,
        "expected": exp_static,
        "delivered": delivered,
        "lost": lost,
        "loss_pct": round(100.0 * lost as f64 / (exp_static.max(1)) as f64, 4),
        "duplicates": base(|s| &s.duplicates) - dup0,
        "out_of_order": base(|s| &s.out_of_order) - ooo0,
        "wasted": wasted,
        "delivered_per_s": round(delivered as f64 / deliver_s.max(1e-9), 0),
        "frames_per_s": round((delivered + wasted) as f64 / deliver_s.max(1e-9), 0),
        "deliver_s": round(deliver_s, 3),
        "latency_us": latency_json(ctx)?,
    });
    cpu_json(&mut out, pre, post, self_pre, self_post, wall);
    if let (Some(a), Some(b)) = (pre, post) {
        let cpu = b.cpu_s - a.cpu_s;
        out["target_cpu_us_per_event"] = json!(round(1e6 * cpu / (published.max(1)) as f64, 3));
        out["target_cpu_ns_per_delivery"] = json!(round(1e9 * cpu / (delivered.max(1)) as f64, 1));
    }
    Ok(out)
}

/// idle: RSS per connection, then one broadcast.
async fn idle(
    args: &Args,
    ctx: &Ctx,
    p: &mut Publisher,
    ready: usize,
    target_pre: Option<procfs::Sample>,
    self_pre: procfs::Sample,
) -> Result<Value> {
    // Let the relay settle (allocator, lazily created per-connection state).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let post = args.pid.map(|pid| procfs::sample(Some(pid))).transpose()?;
    let self_post = procfs::sample(None)?;
    let mut out = json!({});
    if let (Some(a), Some(b)) = (target_pre, post) {
        let per = (b.rss_kb as f64 - a.rss_kb as f64) / ready as f64;
        out["target_rss_before_kb"] = json!(a.rss_kb);
        out["target_rss_kb"] = json!(b.rss_kb);
        out["target_hwm_kb"] = json!(b.hwm_kb);
        out["target_rss_per_conn_kb"] = json!(round(per, 2));
        out["target_connect_cpu_s"] = json!(round(b.cpu_s - a.cpu_s, 3));
    }
    out["loadgen_rss_kb"] = json!(self_post.rss_kb);
    out["loadgen_rss_per_conn_kb"] = json!(round(
        (self_post.rss_kb as f64 - self_pre.rss_kb as f64) / ready as f64,
        2
    ));

    ctx.reset_histograms();
    let pre = args.pid.map(|pid| procfs::sample(Some(pid))).transpose()?;
    let self_pre2 = procfs::sample(None)?;
    let got = || ctx.bcast_got[BCAST_IDLE as usize].load(Ordering::Relaxed);
    let t = Instant::now();
    publish_one(p, Dest::Broadcast, BCAST_IDLE).await?;
    let all = wait_until(Duration::from_secs_f64(args.idle_wait), || got() >= ready).await;
    let secs = t.elapsed().as_secs_f64();
    let post2 = args.pid.map(|pid| procfs::sample(Some(pid))).transpose()?;
    let self_post2 = procfs::sample(None)?;
    out["broadcast_received"] = json!(got());
    out["broadcast_all"] = json!(all);
    out["broadcast_s"] = json!(round(secs, 3));
    out["latency_us"] = latency_json(ctx)?;
    if let (Some(a), Some(b)) = (pre, post2) {
        out["broadcast_cpu_s"] = json!(round(b.cpu_s - a.cpu_s, 3));
        out["target_hwm_kb"] = json!(b.hwm_kb);
    }
    out["loadgen_cpu_s"] = json!(round(self_post2.cpu_s - self_pre2.cpu_s, 3));
    Ok(out)
}
