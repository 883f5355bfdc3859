//! The scenario phases of `keybus bench` against an in-process broker (this process, so the
//! bench reads the broker's CPU time and memory from `/proc/<own pid>`): the arguments as the
//! binary parses them, the figures as the bench returns them.

use clap::Parser;
use keybus_cli::bench::config::{ConfigArgs, entities_toml};
use keybus_cli::bench::scenario::Measure;
use keybus_cli::bench::{BenchArgs, run_and_collect};
use keybus_server::config::Config;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

async fn broker(queues: usize) -> Result<keybus_server::Running, String> {
    let text = entities_toml(&ConfigArgs {
        queues,
        topics: 1,
        subscriptions: 2,
        queue_max_size_mb: None,
    });
    let config = Config::parse(&text).map_err(|e| e.to_string())?;
    let opts = keybus_server::ServeOptions {
        in_memory: true,
        amqp_port: 0,
        http_port: 0,
        ..keybus_server::ServeOptions::default()
    };
    keybus_server::start_with(opts, config)
        .await
        .map_err(|e| e.to_string())
}

async fn bench(cs: &str, args: &[&str]) -> Result<Vec<Measure>, String> {
    let pid = std::process::id().to_string();
    let mut argv = vec!["bench", "--connection-string", cs, "--broker-pid", &pid];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    run_and_collect(cli.bench).await.map_err(|e| e.to_string())
}

fn figure(ms: &[Measure], metric: &str) -> Option<f64> {
    ms.iter().find(|m| m.metric == metric).map(|m| m.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_the_connections_and_reports_cpu_and_memory() -> Result<(), String> {
    let b = broker(3).await?;
    let ms = bench(
        &b.connection_string,
        &[
            "--queues",
            "bench-1,bench-2,bench-3",
            "--phases",
            "idle",
            "--idle-connections",
            "5",
            "--idle-secs",
            "1",
        ],
    )
    .await?;
    assert_eq!(figure(&ms, "idle connections"), Some(5.0));
    let cpu = figure(&ms, "broker CPU").ok_or("no CPU figure")?;
    assert!((0.0..=200.0).contains(&cpu), "cpu {cpu}");
    let rss = figure(&ms, "broker RSS at end").ok_or("no RSS figure")?;
    assert!(rss > 1.0, "rss {rss} MB");
    assert!(figure(&ms, "broker RSS max").is_some_and(|max| max >= rss));
    b.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_fills_the_queue_and_first_receive_takes_from_it() -> Result<(), String> {
    let b = broker(1).await?;
    let cs = b.connection_string.clone();
    let common = ["--queues", "bench-1", "--queue-counts", "1"];
    let mut args = common.to_vec();
    args.extend(["--phases", "depth", "--messages", "300"]);
    let ms = bench(&cs, &args).await?;
    assert_eq!(figure(&ms, "messages queued"), Some(300.0));
    assert!(figure(&ms, "broker RSS after fill").is_some_and(|mb| mb > 1.0));

    let mut args = common.to_vec();
    args.extend(["--phases", "first-receive"]);
    let ms = bench(&cs, &args).await?;
    let attach = figure(&ms, "connect + token + attach").ok_or("no attach time")?;
    let first = figure(&ms, "connect to first delivery").ok_or("no delivery time")?;
    assert!(
        first >= attach,
        "first delivery {first} ms before attach {attach} ms"
    );
    b.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_receive_from_an_empty_queue_fails() -> Result<(), String> {
    let b = broker(1).await?;
    let r = bench(
        &b.connection_string,
        &[
            "--queues",
            "bench-1",
            "--phases",
            "first-receive",
            "--timeout-secs",
            "1",
        ],
    )
    .await;
    assert!(
        r.as_ref().is_err_and(|e| e.contains("first delivery")),
        "{r:?}"
    );
    b.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_phases_do_not_mix_with_throughput_phases() -> Result<(), String> {
    let b = broker(1).await?;
    let r = bench(&b.connection_string, &["--phases", "idle,send"]).await;
    assert!(r.is_err_and(|e| e.contains("run alone")));
    b.stop();
    Ok(())
}
