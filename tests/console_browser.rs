//! The console in a real headless browser: Debian's chromium driven over
//! WebDriver (chromedriver) against a running stack. Screenshots of each
//! page go to `<target dir>/console-screenshots/` for a reviewer.

mod common;
mod console_support;

use std::path::PathBuf;
use std::time::Duration;

use common::Stack;
use console_support::webdriver::Browser;
use console_support::{self as cs, OPERATOR_TOKEN};
use sagaflow_test_support::free_port;
use sagaflow_test_support::process::ChildGuard;

const UI: Duration = Duration::from_secs(120);

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_finds_inspects_retries_and_redrives_in_the_browser() {
    let mut stack = Stack::start("console-ui", 2).await;
    stack.start_orchestrator();
    stack.start_adapters();
    let api = stack.orchestrators[0].http_addr(UI);
    let db = stack.path("ui.db");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sagas = format!(
        "sagas:\n  dir: {}\n  services: {}\n",
        root.join("topology/sagas").display(),
        root.join("topology/services.yaml").display()
    );
    let cfg = cs::config_with(
        &stack,
        "ui",
        &db,
        Some(&format!("http://{api}")),
        false,
        &sagas,
    );
    let console = cs::start(&stack, "console-ui", &cfg);

    let port = free_port();
    let mut driver_cmd = std::process::Command::new("chromedriver");
    driver_cmd.arg(format!("--port={port}"));
    let _driver = ChildGuard::command("chromedriver", driver_cmd, stack.path("chromedriver.log"));
    let browser = Browser::open(&format!("http://127.0.0.1:{port}")).await;
    let shots = screenshots();
    // A failing step must not leave chromium running: the session is
    // closed whatever happens, then the failure goes on.
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        stack.place_order("ui-ok-1", "alice", 5_000).await;
        stack.place_order("ui-declined-1", "broke", 6_000).await;
        stack.place_order("stuck-1", "broke", 7_000).await;

        // Overview: counts arrive as the sagas end.
        browser.goto(&format!("{}/#/", console.url)).await;
        browser.wait_text("#ov-total", "3", UI).await;
        browser.wait_for("#ov-counts", UI).await;
        browser.screenshot(&shots.join("01-overview.png")).await;

        // Search an order by its key and open it.
        browser.goto(&format!("{}/#/sagas", console.url)).await;
        let key = browser.wait_for("#search-key", UI).await;
        browser.type_into(&key, "ui-ok-1").await;
        let submit = browser.wait_for("#search-submit", UI).await;
        browser.click(&submit).await;
        let row = browser
            .wait_for(r#"tr.saga-row[data-id="order-checkout:ui-ok-1"]"#, UI)
            .await;
        assert_eq!(browser.find_all("tr.saga-row").await.len(), 1);
        browser
            .screenshot(&shots.join("02-search-by-key.png"))
            .await;
        browser.click(&row).await;
        browser.wait_text("#saga-status", "COMPLETED", UI).await;
        browser
            .wait_for(
                r#".event[data-kind="STEP_SUCCEEDED"][data-step="charge_payment"] .data-output"#,
                UI,
            )
            .await;
        browser
            .screenshot(&shots.join("03-completed-saga.png"))
            .await;

        // A compensated saga: the failed step and its compensation on the
        // timeline, and on the diagram.
        browser
            .goto(&format!(
                "{}/#/saga/order-checkout%3Aui-declined-1",
                console.url
            ))
            .await;
        browser.wait_text("#saga-status", "COMPENSATED", UI).await;
        let failed = browser
            .wait_for(
                r#".event[data-kind="STEP_FAILED"][data-step="charge_payment"]"#,
                UI,
            )
            .await;
        assert!(browser.text(&failed).await.contains("card declined"));
        browser
            .wait_for(
                r#".event[data-kind="COMPENSATION_STEP_SUCCEEDED"][data-step="reserve_inventory"]"#,
                UI,
            )
            .await;
        browser
            .wait_for(
                r#"svg.diagram .node.failed[data-step="charge_payment"]"#,
                UI,
            )
            .await;
        browser
            .wait_for(
                r#"svg.diagram .node.compensated[data-step="reserve_inventory"]"#,
                UI,
            )
            .await;
        browser
            .screenshot(&shots.join("04-compensated-saga.png"))
            .await;

        // A failed saga (its compensation was refused); the backend is fixed,
        // the operator enters the token and retries; the saga finishes.
        browser
            .goto(&format!("{}/#/saga/order-checkout%3Astuck-1", console.url))
            .await;
        browser.wait_text("#saga-status", "FAILED", UI).await;
        // Without the operator token the page offers no retry.
        assert!(browser.find_all("#retry-button").await.is_empty());
        let token = browser.wait_for("#token", UI).await;
        browser.type_into(&token, OPERATOR_TOKEN).await;
        let use_token = browser.wait_for("#token-form button", UI).await;
        browser.click(&use_token).await;
        browser.wait_text("#who", "operator", UI).await;
        browser.screenshot(&shots.join("05-failed-saga.png")).await;
        stack.ledger.lock().unwrap().unstick = true;
        // The adapter's circuit breaker opened on the failures and fails fast
        // for its cool-down (30 s): as an operator would, retry until the
        // saga goes through.
        let deadline = tokio::time::Instant::now() + UI;
        loop {
            let retry = browser.wait_for("#retry-button", UI).await;
            browser.click(&retry).await;
            let settle = tokio::time::Instant::now() + Duration::from_secs(12);
            while tokio::time::Instant::now() < settle
                && !browser
                    .text_of("#saga-status")
                    .await
                    .contains("COMPENSATED")
            {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if browser
                .text_of("#saga-status")
                .await
                .contains("COMPENSATED")
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the retried saga never finished: {}\n{}",
                browser.text_of("body").await,
                stack.logs()
            );
        }
        browser.wait_for(r#".event[data-kind="RESUMED"]"#, UI).await;
        browser.screenshot(&shots.join("06-retried-saga.png")).await;

        // Bulk: a dry run counts before anything happens.
        browser
            .goto(&format!("{}/#/bulk?status=COMPENSATED", console.url))
            .await;
        let dry = browser.wait_for("#bulk-dry-run", UI).await;
        browser.click(&dry).await;
        browser.wait_text("#bulk-count", "2 sagas match", UI).await;
        browser.screenshot(&shots.join("07-bulk-dry-run.png")).await;

        // Dead letters: three triggers dead-lettered during an incident are
        // redriven together, and their sagas start and complete.
        let orders = stack.topic("orders.events");
        for i in 0..3 {
            let id = format!("ui-dlq-{i}");
            let bytes = stack.order_placed(&id, "c-dlq", 1_000).await;
            cs::send_dead_letter(
                &stack,
                &orders,
                10 + i,
                &id,
                &bytes,
                "SF-ORCH-099",
                "the registry was down (test)",
            )
            .await;
        }
        browser
            .goto(&format!("{}/#/dead-letters", console.url))
            .await;
        let deadline = tokio::time::Instant::now() + UI;
        while browser.find_all(".dlq-select").await.len() < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}",
                browser.text_of("body").await
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        browser.screenshot(&shots.join("08-dead-letters.png")).await;
        let all = browser.wait_for("#select-all", UI).await;
        browser.click(&all).await;
        let redrive = browser.wait_for("#redrive-selected", UI).await;
        browser.click(&redrive).await;
        browser.wait_text("#flash", "redriven: 3", UI).await;
        browser
            .goto(&format!(
                "{}/#/sagas?id=order-checkout%3Aui-dlq",
                console.url
            ))
            .await;
        let deadline = tokio::time::Instant::now() + UI;
        loop {
            let text = browser.text_of("#results").await;
            if text.matches("COMPLETED").count() == 3 {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                browser
                    .screenshot(&shots.join("09-redriven-sagas-failed.png"))
                    .await;
                panic!(
                    "redriven sagas did not complete: {text}\n{}\n--- console ---\n{}\n{}",
                    browser.text_of("body").await,
                    console.child.output(),
                    stack.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        browser
            .screenshot(&shots.join("09-redriven-sagas.png"))
            .await;

        browser.goto(&format!("{}/#/audit", console.url)).await;
        browser.wait_text("#audit-table", "redrive", UI).await;
        browser.wait_text("#audit-table", "retry", UI).await;
        browser.screenshot(&shots.join("10-audit.png")).await;

        // Definitions: each saga type and version drawn.
        browser
            .goto(&format!("{}/#/definitions", console.url))
            .await;
        browser
            .wait_for(
                r#".definition-card[data-type="order-checkout"] svg.definition"#,
                UI,
            )
            .await;
        assert_eq!(browser.find_all("svg.definition").await.len(), 3);
        browser.screenshot(&shots.join("11-definitions.png")).await;
    }))
    .await;
    browser.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    println!("screenshots: {}", shots.display());
    drop(console);
}
