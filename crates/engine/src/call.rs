//! Adapter calls, bounded in time and measured.

use std::time::Duration;

use baton_core::AdapterError;

/// Bounds an adapter call; a call that overruns is a transient error.
/// Also records `baton_adapter_call_seconds{adapter, call}` and, on failure,
/// `baton_adapter_errors_total{adapter, call}`.
pub(crate) async fn bounded<T>(
    limit: Duration,
    adapter: &'static str,
    name: &'static str,
    call: impl Future<Output = Result<T, AdapterError>>,
) -> Result<T, AdapterError> {
    let begun = std::time::Instant::now();
    let result = match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(AdapterError::Transient(format!(
            "the adapter call took longer than {}",
            baton_core::HumanDuration(limit)
        ))),
    };
    metrics::histogram!("baton_adapter_call_seconds", "adapter" => adapter, "call" => name)
        .record(begun.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!("baton_adapter_errors_total", "adapter" => adapter, "call" => name)
            .increment(1);
    }
    result
}
