//! Tests of `Supervisor::reload` (`SIGHUP`): pins added start, pins removed
//! become on-demand and follow the reaper, limits change, bad entries are
//! rejected like at start.

use super::*;

fn sid(s: &str) -> SeriesId {
    SeriesId::parse(s).unwrap()
}

fn t(secs: u64) -> Timestamp {
    Timestamp(Duration::from_secs(secs).as_nanos())
}

const BTC: &str = "binance:spot:BTC/USDT:1m";
const ETH: &str = "binance:spot:ETH/USDT:1m";
const XRP: &str = "binance:spot:XRP/USDT:1m";

fn pinned(list: &[&str]) -> Supervisor {
    let cfg = SupervisorConfig { whitelist: list.iter().map(|s| sid(s)).collect(), ..SupervisorConfig::default() };
    let mut sup = Supervisor::new(cfg);
    let mut out = Vec::new();
    sup.start_whitelist(t(0), &mut out);
    sup
}

fn reload(sup: &mut Supervisor, list: &[&str], now: u64, holders: i64) -> (Vec<Effect>, Vec<SeriesId>, Vec<SeriesId>) {
    let mut out = Vec::new();
    let wl = list.iter().map(|s| sid(s)).collect();
    let (added, removed) = sup.reload(wl, 0, Duration::from_secs(60), t(now), &|_| holders, &mut out);
    (out, added, removed)
}

#[test]
fn a_pin_added_starts_its_job_and_one_removed_is_reaped_after_the_ttl() {
    let mut sup = pinned(&[BTC, ETH]);
    let (out, added, removed) = reload(&mut sup, &[BTC, XRP], 10, 0);
    assert_eq!(out, vec![Effect::Start { series: sid(XRP) }]);
    assert_eq!((added, removed), (vec![sid(XRP)], vec![sid(ETH)]));
    assert!(sup.job(&sid(XRP)).unwrap().pinned);
    let eth = sup.job(&sid(ETH)).unwrap();
    assert!(!eth.pinned);
    assert_eq!((eth.refcount, eth.last_zero_at), (0, Some(t(10))));
    // The reaper: kept until the idle TTL (60 s) has run from the reload.
    assert_eq!(sup.next_deadline(), Some(t(70)));
    let mut out = Vec::new();
    sup.on_tick(t(69), &mut out);
    assert!(out.is_empty());
    sup.on_tick(t(70), &mut out);
    assert_eq!(out, vec![Effect::Stop { series: sid(ETH), reason: StopReason::Reaped }]);
    assert!(sup.job(&sid(BTC)).unwrap().pinned);
}

#[test]
fn a_removed_pin_with_subscribers_stays_until_they_leave() {
    let mut sup = pinned(&[BTC, ETH]);
    let (out, _, _) = reload(&mut sup, &[BTC], 5, 2);
    assert!(out.is_empty());
    assert_eq!(sup.job(&sid(ETH)).unwrap().refcount, 2);
    assert_eq!(sup.next_deadline(), None);
    sup.unsubscribe(&sid(ETH), t(6));
    sup.unsubscribe(&sid("binance:spot:ETH/USDT:5m"), t(7));
    assert_eq!(sup.job(&sid(ETH)).unwrap().last_zero_at, Some(t(7)));
    assert_eq!(sup.next_deadline(), Some(t(67)));
}

#[test]
fn an_ondemand_job_that_becomes_pinned_is_kept_not_restarted() {
    let mut sup = pinned(&[BTC]);
    let mut out = Vec::new();
    assert_eq!(sup.subscribe(&sid(ETH), t(1), &mut out), SubscribeOutcome::Accepted);
    sup.unsubscribe(&sid(ETH), t(2));
    let (out, added, _) = reload(&mut sup, &[BTC, "binance:spot:ETH/USDT:5m"], 3, 0);
    assert!(out.is_empty(), "the running job is kept: {out:?}");
    assert_eq!(added, vec![sid(ETH)]);
    let eth = sup.job(&sid(ETH)).unwrap();
    assert!(eth.pinned);
    assert_eq!((eth.refcount, eth.last_zero_at), (-1, None));
    assert_eq!(sup.next_deadline(), None);
}

#[test]
fn the_same_whitelist_changes_nothing_and_limits_apply() {
    let mut sup = pinned(&[BTC]);
    let mut out = Vec::new();
    let (added, removed) =
        sup.reload(vec![sid(BTC), sid("kraken:spot:BTC/USDT:1m")], 3, Duration::from_secs(5), t(1), &|_| 0, &mut out);
    assert!(out.is_empty() && added.is_empty() && removed.is_empty());
    assert_eq!(sup.config().max_ondemand_jobs, 3);
    assert_eq!(sup.config().idle_ttl, Duration::from_secs(5));
    assert_eq!(sup.whitelist_rejections().len(), 1);
}

#[test]
fn the_read_role_starts_nothing() {
    let cfg = SupervisorConfig { role: Role::Read, ..SupervisorConfig::default() };
    let mut sup = Supervisor::new(cfg);
    let (out, added, _) = reload(&mut sup, &[BTC], 1, 0);
    assert!(out.is_empty());
    assert_eq!(added, vec![sid(BTC)]);
    assert_eq!(sup.jobs_len(), 0);
}
